"""Reading a JSON request body within the configured limits.

A body may be sent gzip-compressed (``Content-Encoding: gzip``); it is decompressed
within the same limit, so a small compressed body that inflates past it (a zip bomb)
is a 413 without ever being held in memory whole. Any other encoding is a 415 that
names it.
"""

from __future__ import annotations

import zlib

from werkzeug.wrappers import Request

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
    """The raw body of a JSON request; 415 for another media type or an encoding other
    than gzip, 413 when too large (before or after decompression)."""
    mimetype = request.mimetype
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        _drain(request, _DRAIN_LIMIT)
        got = request.content_type or "no Content-Type"
        raise UnsupportedMediaType(
            f"The body must be JSON sent with Content-Type: application/json; got {got}."
        )
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip"):
        _drain(request, _DRAIN_LIMIT)
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not supported; send the body as is "
            "(identity) or gzip-compressed (gzip)."
        )
    body = _read_limited(request, max_bytes)
    return body if encoding == "identity" else _gunzip(body, max_bytes)


def _gunzip(body: bytes, max_bytes: int) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip header and trailer
    try:
        data = inflater.decompress(body, max_bytes + 1)
        if len(data) > max_bytes:
            raise PayloadTooLarge(f"The gzip body inflates to over the limit of {max_bytes} "
                                  "bytes.")
        if not inflater.eof:
            raise InvalidJSON("The gzip body is cut short.")
    except zlib.error as exc:
        raise InvalidJSON(f"The body is not valid gzip: {exc}.") from None
    return data


def _read_limited(request: Request, max_bytes: int) -> bytes:
    length = request.content_length
    if length is not None and length > max_bytes:
        _drain(request, _DRAIN_LIMIT)
        raise PayloadTooLarge(f"The body is {length} bytes; the limit is {max_bytes} bytes.")
    chunks: list[bytes] = []
    size = 0
    while True:
        if length is not None and size >= length:  # all of it: no read just to see the end
            break
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
