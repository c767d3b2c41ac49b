"""Reading a JSON request body within the configured limits."""

from __future__ import annotations

from flask import Request

from ..errors import InvalidJSON, PayloadTooLarge, UnsupportedMediaType

_CHUNK = 64 * 1024
# How much of a refused body is read and thrown away before answering, so that a
# client still sending gets to read the 413/415 instead of a connection reset. The
# WSGI server may read the rest of the body itself to keep the connection alive.
_DRAIN_LIMIT = 64 * 1024 * 1024


def _read(request: Request, size: int) -> bytes:
    """One read from the body; a malformed body (bad chunked encoding, cut short) is a 400."""
    try:
        return request.stream.read(size)
    except Exception:  # the WSGI server's own parse errors are not all OSErrors
        raise InvalidJSON("The request body could not be read: malformed chunked encoding "
                          "or a body shorter than its Content-Length.") from None


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
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = _read(request, min(_CHUNK, max_bytes + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            _drain(request, _DRAIN_LIMIT)
            raise PayloadTooLarge(f"The body is over the limit of {max_bytes} bytes.")
    return b"".join(chunks)


def _drain(request: Request, limit: int) -> None:
    drained = 0
    while drained < limit:
        chunk = _read(request, _CHUNK)
        if not chunk:
            return
        drained += len(chunk)
