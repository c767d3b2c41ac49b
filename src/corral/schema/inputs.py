"""Turn a request body into validated model inputs, or a precise client error."""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import BaseModel, ValidationError

from ..engine import Input
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
    """Whether a container sits deeper than ``limit`` (the top level is depth 1)."""
    if not isinstance(value, (dict, list)):
        return False
    stack = [(value, 1)]  # containers only: scalars cannot be too deep
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def validate_item(input_type: type[BaseModel], document: bytes) -> BaseModel:
    """One input from its JSON document: strict JSON validation (``"5"`` is not a number).

    The one validation rule of Corral: the HTTP worker applies it to answer 422, and
    a replica in another process applies it to the same bytes to get the same value.
    Raises pydantic's ValidationError.
    """
    return input_type.model_validate_json(document, strict=True)


def _item_document(item: Any) -> bytes:
    """One array element as its own JSON document: the same JSON value the client sent
    (number spellings normalised, a duplicate key resolved to its last value, as the
    validator itself would)."""
    try:
        return json.dumps(item, ensure_ascii=False, allow_nan=False,
                          separators=(",", ":")).encode()
    except UnicodeEncodeError:  # a lone surrogate escape ("\\ud800") that json.loads let by
        raise InvalidJSON("The body is not valid JSON: lone surrogate in a string.") from None


def validate_inputs(
    input_type: type[BaseModel], body: bytes, payload: Any, max_items: int
) -> tuple[list[Input], bool]:
    """Validate a parsed body: one object or a non-empty array of objects.

    Returns the inputs, each with the JSON document it was validated from, and
    whether the body was an array. Validation (:func:`validate_item`) reads the
    JSON text, so that field types such as datetimes follow their JSON rules. Errors
    name every field; in an array, ``loc`` starts with the item's index.
    """
    if isinstance(payload, dict):
        return [_validate(input_type, body, ())], False
    if isinstance(payload, list):
        if not payload:
            raise InvalidInput(
                "The array is empty; send at least one input.",
                errors=[{"loc": [], "msg": "List should have at least 1 item after validation, "
                         "not 0", "type": "too_short"}],
            )
        if len(payload) > max_items:
            raise InvalidInput(
                f"The array holds {len(payload)} inputs; at most {max_items} are accepted "
                "per request.",
                errors=[{"loc": [], "msg": f"List should have at most {max_items} items",
                         "type": "too_long"}],
            )
        inputs: list[Input] = []
        errors: list[dict[str, Any]] = []
        for i, item in enumerate(payload):
            if not isinstance(item, dict):
                errors.append({"loc": [i], "msg": "Input should be an object",
                               "type": "model_type"})
                continue
            try:
                inputs.append(_validate(input_type, _item_document(item), (i,)))
            except InvalidInput as exc:
                errors.extend(exc.errors or [])
        if errors:
            raise _invalid(errors)
        return inputs, True
    raise InvalidInput(
        f"The body must be a JSON object (one input) or an array of objects; got "
        f"{_JSON_TYPES.get(type(payload), 'a value')}.",
        errors=[{"loc": [], "msg": f"Input should be an object or an array of {input_type.__name__}",
                 "type": "model_type"}],
    )


def _validate(input_type: type[BaseModel], document: bytes, prefix: tuple[int, ...]) -> Input:
    try:
        return Input(validate_item(input_type, document), document)
    except ValidationError as exc:
        bad_json = [e for e in exc.errors() if e["type"] == "json_invalid"]
        if bad_json:  # e.g. a lone surrogate escape that Python's parser let through
            raise InvalidJSON(f"The body is not valid JSON: {bad_json[0]['msg']}.") from None
        errors = [
            {"loc": [*prefix, *e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        raise _invalid(errors) from None


def _invalid(errors: list[dict[str, Any]]) -> InvalidInput:
    fields = ", ".join(".".join(str(p) for p in e["loc"]) or "(body)" for e in errors[:5])
    more = f" and {len(errors) - 5} more" if len(errors) > 5 else ""
    return InvalidInput(f"Invalid input: {fields}{more}.", errors=errors)


def example_from_schema(schema: dict[str, Any]) -> dict[str, Any] | None:
    """An input built from a JSON Schema's field examples and defaults, or None when a
    required field has neither."""
    example: dict[str, Any] = {}
    for field, prop in schema.get("properties", {}).items():
        if prop.get("examples"):
            example[field] = prop["examples"][0]
        elif "default" in prop:
            example[field] = prop["default"]
        elif field in schema.get("required", []):
            return None
    return example


def example_input(input_type: type[BaseModel]) -> BaseModel | None:
    """A valid input of ``input_type`` from its schema's examples, for warming a model up;
    None when the examples do not make one."""
    example = example_from_schema(input_type.model_json_schema())
    if example is None:
        return None
    try:
        return validate_item(input_type, json.dumps(example).encode())
    except (ValidationError, TypeError, ValueError):
        return None
