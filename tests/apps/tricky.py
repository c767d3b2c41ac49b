"""An app for end-to-end tests: one model whose input has tricky field types, and whose
output echoes back exactly what the model saw, so in-process and process mode can be
compared input by input (tests/e2e/test_modes_agree.py)."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

import corral


class Color(StrEnum):
    RED = "red"
    GREEN = "green"


class Point(BaseModel):
    model_config = ConfigDict(extra="forbid")

    x: int
    y: float
    label: str = "p"


class TrickyInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    when: datetime
    day: date
    color: Color
    count: int
    ratio: float
    text: str
    amount: Decimal
    sender: str = Field(alias="from")
    point: Point
    ids: list[int]
    mode: Literal["fast", "exact"]
    tag: str = Field(description="Stripped and lower-cased.")
    note: str | None = None
    limit: int = 10
    extras: list[str] = Field(default_factory=list)
    secret: str = Field("hidden", exclude=True)

    @field_validator("tag")
    @classmethod
    def _normalise_tag(cls, value: str) -> str:
        return value.strip().lower()


class Seen(BaseModel):
    seen: dict[str, Any] = Field(description="The input as model_dump(mode='json').")
    types: dict[str, str] = Field(description="type(value).__name__ of every field.")
    secret: str = Field(description="The excluded field, which the dump leaves out.")
    when_offset_s: float | None = Field(description="The datetime's UTC offset, in seconds.")
    count_repr: str = Field(description="repr() of the int, exact even beyond 2**53.")
    ratio_repr: str = Field(description="repr() of the float, so -0.0 shows.")
    amount_repr: str = Field(description="str() of the Decimal, with its exponent.")


class EchoInputModel(corral.Model):
    """Echoes back what it was given, as JSON-ready values."""

    name = "echo-input"
    batching = corral.Batching(max_size=8, max_wait_ms=5)

    def predict(self, batch: list[TrickyInput]) -> list[Seen]:
        out = []
        for x in batch:
            offset = x.when.utcoffset()
            out.append(Seen(
                seen=x.model_dump(mode="json"),
                types={name: type(getattr(x, name)).__name__ for name in type(x).model_fields},
                secret=x.secret,
                when_offset_s=None if offset is None else offset.total_seconds(),
                count_repr=repr(x.count),
                ratio_repr=repr(x.ratio),
                amount_repr=str(x.amount),
            ))
        return out


app = corral.Server([EchoInputModel])
