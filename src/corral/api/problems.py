"""The one error handler: every error becomes ``application/problem+json``.

CorralErrors carry their own status and type. Werkzeug's HTTP errors (unknown
route, wrong method) are mapped onto CorralErrors. Anything else is a bug: a 500
with an error id, the traceback logged once here and never sent to the client.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed

from ..errors import CorralError, InternalError, MethodNotAllowed, NotFound, new_error_id
from ..schema.problems import at_item as at_item
from ..schema.problems import compact_json as compact_json
from ..schema.problems import problem_document as problem_document

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
_EXTRA_PHRASES = {499: "Client Closed Request"}  # nginx's, for a client that went away


def problem_response(err: CorralError) -> Response:
    return Response(compact_json(problem_document(err)), status=status_line(err.status),
                    mimetype=PROBLEM_JSON, headers=err.headers())


def status_line(code: int) -> str:
    """``422 Unprocessable Content`` rather than Werkzeug's upper-case reason phrase."""
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:  # a status line needs a reason phrase (RFC 9112, PEP 3333)
        return f"{code} {_EXTRA_PHRASES.get(code, 'Unknown')}"


def _from_http_exception(exc: HTTPException) -> CorralError | Response:
    code = exc.code or 500
    where = f"{request.method} {request.path}"
    if isinstance(exc, WerkzeugMethodNotAllowed):
        allowed = sorted(exc.valid_methods or [])
        return MethodNotAllowed(f"{where} is not allowed; use {', '.join(allowed)}.",
                                allowed=allowed)
    if code == 404:
        return NotFound(f"No endpoint at {request.path}. The API is described at /docs.")
    # Any other HTTP error werkzeug raises: a plain problem of that status.
    body = {"type": "about:blank", "title": exc.name, "status": code,
            "detail": exc.description or exc.name}
    return Response(compact_json(body), status=status_line(code), mimetype=PROBLEM_JSON)


def internal_error(exc: BaseException, method: str, path: str) -> InternalError:
    """The 500 for an error nobody expected: logged here once with its traceback and an
    error id; the client gets the id, never the traceback."""
    error_id = new_error_id()
    logger.error("unhandled error on %s %s (error id %s)", method, path, error_id,
                 exc_info=exc)
    return InternalError(f"The server failed on this request; error id {error_id}.",
                         error_id=error_id)


def install_error_handlers(app: Flask) -> None:
    @app.errorhandler(CorralError)
    def corral_error(err: CorralError) -> Response:
        return problem_response(err)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        mapped = _from_http_exception(exc)
        return problem_response(mapped) if isinstance(mapped, CorralError) else mapped

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        return problem_response(internal_error(exc, request.method, request.path))
