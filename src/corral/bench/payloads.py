"""Request bodies for load tests: valid inputs built from a model's input schema (its
field examples first, then values that meet each field's constraints), one body that
must be refused, or real inputs from a JSONL file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import StartupError

if TYPE_CHECKING:
    from .target import ModelTarget

# How many different valid bodies a load test cycles through (when the examples give
# that many): a server that caches one answer should not look faster than it is.
VARIANTS = 8


def valid_bodies(schema: dict[str, Any], count: int = VARIANTS) -> list[bytes]:
    """Up to ``count`` different JSON bodies (one input each) that should pass
    ``schema``: variant i takes each field's i-th example (cycling), and fields without
    examples take their default or a value made to meet their constraints.

    Raises :class:`PayloadError` when some required field can be neither (a ``pattern``
    to match, say): the caller then asks for real inputs.
    """
    defs = schema.get("$defs", {})
    props: dict[str, Any] = schema.get("properties", {})
    spans = [len(p.get("examples") or []) for p in props.values()]
    variants = max([1, *spans])
    out: list[bytes] = []
    for i in range(min(count, variants)):
        value = _object(schema, defs, i)
        if value is _NONE:
            raise PayloadError(_missing(schema, defs))
        body = json.dumps(value, separators=(",", ":")).encode()
        if body not in out:
            out.append(body)
    return out


def invalid_body(schema: dict[str, Any]) -> bytes:
    """A body the server must refuse with 422: an object missing its required fields,
    or, when nothing is required, an empty array (at least one input is required)."""
    return b"{}" if schema.get("required") else b"[]"


def read_jsonl(path: str | Path) -> list[bytes]:
    """The bodies in a JSONL file: one JSON input (object) or array of inputs per line;
    blank lines skipped. Raises :class:`PayloadError` naming the first bad line."""
    bodies: list[bytes] = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PayloadError(f"Cannot read payloads from {path}: {exc}.") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise PayloadError(f"{path} line {number} is not JSON: {exc}.") from None
        if not isinstance(value, (dict, list)):
            raise PayloadError(f"{path} line {number} is not an input (a JSON object) or an "
                               "array of inputs.")
        bodies.append(json.dumps(value, separators=(",", ":")).encode())
    if not bodies:
        raise PayloadError(f"{path} holds no inputs (one JSON object per line).")
    return bodies


def check_locally(model: ModelTarget, bodies: list[bytes]) -> None:
    """Validate ``bodies`` as the server would, with the model's input class (a model read
    from an app file); :class:`PayloadError` quoting the first refusal."""
    from ..errors import CorralError
    from ..schema.inputs import validate_inputs

    if model.input_type is None:
        return
    for body in bodies:
        try:
            validate_inputs(model.input_type, body, json.loads(body), model.max_queue)
        except CorralError as exc:
            found = getattr(exc, "errors", None) or []
            why = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in found[:4])
            raise PayloadError(
                f"Model {model.name!r} would refuse a payload ({exc.status}): "
                f"{why or exc}\nPayload: {body[:200].decode('utf-8', 'replace')}") from None


class PayloadError(StartupError):
    """No valid body could be built or read for a model."""


# -- building values from a schema --------------------------------------------------

_NONE = object()  # "no value meets this schema"


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return _resolve(defs.get(ref.rsplit("/", 1)[1], {}), defs)
    return schema


def _value(schema: dict[str, Any], defs: dict[str, Any], i: int, depth: int = 0) -> Any:
    """A value meeting ``schema`` (variant ``i`` of its examples), or ``_NONE``."""
    schema = _resolve(schema, defs)
    if depth > 8:
        return _NONE
    if schema.get("examples"):
        examples = schema["examples"]
        return examples[i % len(examples)]
    if "default" in schema:
        return schema["default"]
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][i % len(schema["enum"])]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            for option in schema[key]:
                value = _value(option, defs, i, depth + 1)
                if value is not _NONE:
                    return value
            return _NONE
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        return _object(schema, defs, i, depth)
    if kind == "array":
        items = schema.get("items", {})
        n = max(1, int(schema.get("minItems", 1)))
        if "maxItems" in schema:
            n = min(n, int(schema["maxItems"]))
        element = _value(items, defs, i, depth + 1) if n else None
        return _NONE if element is _NONE else [element] * n
    if kind == "string":
        if "pattern" in schema or "format" in schema:
            return _NONE  # a made-up string would likely not match
        n = max(1, int(schema.get("minLength", 1)))
        n = min(n, int(schema.get("maxLength", n)))
        return ("sample text " * (n // 12 + 1))[:n] if n else ""
    if kind in ("integer", "number"):
        return _number(schema, kind == "integer")
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _NONE


def _object(schema: dict[str, Any], defs: dict[str, Any], i: int, depth: int = 0) -> Any:
    schema = _resolve(schema, defs)
    required = set(schema.get("required", []))
    out: dict[str, Any] = {}
    for name, prop in schema.get("properties", {}).items():
        value = _value(prop, defs, i, depth + 1)
        if value is _NONE:
            if name in required:
                return _NONE
            continue
        out[name] = value
    return out


def _number(schema: dict[str, Any], integer: bool) -> float | int:
    low: Any = schema.get("minimum", schema.get("exclusiveMinimum"))
    high: Any = schema.get("maximum", schema.get("exclusiveMaximum"))
    if low is None and high is None:
        value: float = 1.0
    elif low is None:
        value = high - 1
    elif high is None:
        value = low + 1
    else:
        value = (low + high) / 2
    if integer:
        import math

        value = math.floor(value)
        if low is not None and (value < low or (value == low and "exclusiveMinimum" in schema)):
            value = math.ceil(low) + (1 if "exclusiveMinimum" in schema else 0)
        return int(value)
    return value


def _missing(schema: dict[str, Any], defs: dict[str, Any]) -> str:
    schema = _resolve(schema, defs)
    names = [n for n in schema.get("required", [])
             if _value(schema.get("properties", {}).get(n, {}), defs, 0) is _NONE]
    return (f"No valid input can be built from the schema: required field(s) "
            f"{', '.join(names) or '?'} have no example (add Field(examples=[...]) to the "
            "input type) or give real inputs as a JSONL file.")
