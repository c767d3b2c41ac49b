"""Reading a JSON request body within the configured limits."""

from __future__ import annotations

from flask import Request

from ..errors import PayloadTooLarge, UnsupportedMediaType

_CHUNK = 64 * 1024
# How much of an oversized body is read and thrown away so that the client, still
# sending, gets to read the 413 instead of a connection reset. Beyond this the
# connection is simply closed.
_DRAIN_LIMIT = 64 * 1024 * 1024


def read_json_body(request: Request, max_bytes: int) -> bytes:
    """The raw body of a JSON request; 415 for another media type, 413 when too large."""
    mimetype = request.mimetype
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        _drain(request, _DRAIN_LIMIT)
        got = request.content_type or "no Content-Type"
        raise UnsupportedMediaType(
            f"The body must be JSON sent with Content-Type: application/json; got {got}."
        )
    length = request.content_length
    if length is not None and length > max_bytes:
        _drain(request, _DRAIN_LIMIT)
        raise PayloadTooLarge(f"The body is {length} bytes; the limit is {max_bytes} bytes.")
    stream = request.stream
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = stream.read(min(_CHUNK, max_bytes + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            _drain(request, _DRAIN_LIMIT)
            raise PayloadTooLarge(f"The body is over the limit of {max_bytes} bytes.")
    return b"".join(chunks)


def _drain(request: Request, limit: int) -> None:
    stream = request.stream
    drained = 0
    while drained < limit:
        chunk = stream.read(_CHUNK)
        if not chunk:
            return
        drained += len(chunk)
