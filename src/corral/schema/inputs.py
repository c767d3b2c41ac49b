"""Turn a request body into validated model inputs, or a precise client error."""

from __future__ import annotations

import json
import math
from functools import lru_cache
from typing import Annotated, Any

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from ..errors import InvalidInput, InvalidJSON


_JSON_TYPES = {str: "a string", int: "a number", float: "a number", bool: "a boolean",
               type(None): "null"}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _bounded_int(text: str) -> int:
    if len(text) > 4000:
        raise ValueError(f"an integer of {len(text)} digits is out of range")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} is out of range")
    return value


def parse_json(body: bytes, max_depth: int) -> Any:
    """Parse a JSON body, refusing empty bodies, NaN/Infinity and deep nesting (400)."""
    if not body.strip():
        raise InvalidJSON("The request body is empty; send a JSON object or array.")
    try:
        text = body.decode("utf-8")  # strictly: no UTF-16/32 guessing, no BOM
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float,
                           parse_int=_bounded_int)
    except RecursionError:
        raise InvalidJSON(f"The body is nested deeper than {max_depth} levels.") from None
    except UnicodeDecodeError:
        raise InvalidJSON("The body is not UTF-8 text.") from None
    except ValueError as exc:
        raise InvalidJSON(f"The body is not valid JSON: {exc}.") from None
    if _depth_exceeds(value, max_depth):
        raise InvalidJSON(f"The body is nested deeper than {max_depth} levels.")
    return value


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


@lru_cache(maxsize=256)
def _list_adapter(input_type: type[BaseModel], max_items: int) -> TypeAdapter[list[BaseModel]]:
    return TypeAdapter(Annotated[list[input_type], Field(min_length=1, max_length=max_items)])  # type: ignore[valid-type, arg-type]


def validate_inputs(
    input_type: type[BaseModel], body: bytes, payload: Any, max_items: int
) -> tuple[list[BaseModel], bool]:
    """Validate a parsed body: one object or a non-empty array of objects.

    Returns the inputs and whether the body was an array. Validation is strict
    JSON validation (``"5"`` is not a number), from the raw body so that field
    types such as datetimes follow their JSON rules. Errors name every field; in
    an array, ``loc`` starts with the item's index.
    """
    try:
        if isinstance(payload, dict):
            return [input_type.model_validate_json(body, strict=True)], False
        if isinstance(payload, list):
            if len(payload) > max_items:
                raise InvalidInput(
                    f"The array holds {len(payload)} inputs; at most {max_items} are accepted "
                    "per request.",
                    errors=[{"loc": [], "msg": f"List should have at most {max_items} items",
                             "type": "too_long"}],
                )
            return _list_adapter(input_type, max_items).validate_json(body, strict=True), True
    except ValidationError as exc:
        bad_json = [e for e in exc.errors() if e["type"] == "json_invalid"]
        if bad_json:  # e.g. a lone surrogate escape that Python's parser let through
            raise InvalidJSON(f"The body is not valid JSON: {bad_json[0]['msg']}.") from None
        errors = [
            {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        fields = ", ".join(".".join(str(p) for p in e["loc"]) or "(body)" for e in errors[:5])
        more = f" and {len(errors) - 5} more" if len(errors) > 5 else ""
        raise InvalidInput(f"Invalid input: {fields}{more}.", errors=errors) from None
    raise InvalidInput(
        f"The body must be a JSON object (one input) or an array of objects; got "
        f"{_JSON_TYPES.get(type(payload), 'a value')}.",
        errors=[{"loc": [], "msg": f"Input should be an object or an array of {input_type.__name__}",
                 "type": "model_type"}],
    )
