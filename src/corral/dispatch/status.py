"""ModelStatus: what the dispatch core says of one model version, to the HTTP layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

State = Literal["loading", "ready", "failed", "unloaded"]


@dataclass(frozen=True)
class ModelStatus:
    """One model version's state, how many replicas are ready and how many are wanted."""

    state: State
    replicas_ready: int
    replicas: int
    error: str | None = None
