"""Every error Corral raises on purpose, under one root.

Each subclass of :class:`CorralError` is one problem ``type`` of the HTTP API
(DESIGN section 4): it carries its HTTP status, problem title and type as class
attributes, so the single error handler in :mod:`corral.api.problems` can turn
any of them into ``application/problem+json`` without a table of its own.

Errors cross process boundaries as data (:meth:`CorralError.to_dict` and
:func:`error_from_dict`), never pickled.
"""

from __future__ import annotations

import uuid
from typing import Any, ClassVar


class CorralError(Exception):
    """Root of every error Corral raises deliberately."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal server error"

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.item: int | None = None  # the input it concerns, in an array request

    def headers(self) -> dict[str, str]:
        """Extra HTTP headers that go with this problem (e.g. ``Retry-After``)."""
        return {}

    def extra(self) -> dict[str, Any]:
        """Extra members of the problem document beyond the RFC 9457 basics."""
        return {} if self.item is None else {"item": self.item}

    def to_dict(self) -> dict[str, Any]:
        """The error as plain data, to send across a process boundary."""
        return {"type": self.type, "detail": self.detail, "errors": self.errors, **self.extra()}


class StartupError(CorralError):
    """The application cannot start: a model is declared wrongly or settings clash."""

    type = "startup-error"
    title = "Cannot start"


class InvalidJSON(CorralError):
    """The body is not JSON, or it is nested deeper than allowed."""

    status = 400
    type = "invalid-json"
    title = "Body is not valid JSON"


class Unauthorized(CorralError):
    """An admin endpoint was called without a bearer token."""

    status = 401
    type = "unauthorized"
    title = "Unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="corral-admin"'}


class Forbidden(CorralError):
    """An admin endpoint was called with a token that is not the configured one."""

    status = 403
    type = "forbidden"
    title = "Forbidden"


class NotFound(CorralError):
    """No route matches the path."""

    status = 404
    type = "not-found"
    title = "Not found"


class ModelNotFound(NotFound):
    """The path names a model that the server does not serve."""

    type = "model-not-found"
    title = "Model not found"


class VersionNotFound(NotFound):
    """The model exists but not in the requested version."""

    type = "version-not-found"
    title = "Version not found"


class JobNotFound(NotFound):
    """No job has this id: it never existed, or its result expired."""

    type = "job-not-found"
    title = "Job not found"


class JobFinished(CorralError):
    """A job that has already finished cannot be cancelled."""

    status = 409
    type = "job-finished"
    title = "Job already finished"


class ModelInline(CorralError):
    """An inline model runs inside every HTTP worker: the admin API cannot manage it."""

    status = 409
    type = "model-inline"
    title = "Model runs inline"


class MethodNotAllowed(CorralError):
    """The path exists but not for this HTTP method."""

    status = 405
    type = "method-not-allowed"
    title = "Method not allowed"

    def __init__(self, detail: str, *, allowed: list[str]) -> None:
        super().__init__(detail)
        self.allowed = allowed

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allowed)}

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "allowed": self.allowed}


class PayloadTooLarge(CorralError):
    """The body is larger than ``max_body_bytes``."""

    status = 413
    type = "payload-too-large"
    title = "Payload too large"


class UnsupportedMediaType(CorralError):
    """The body is not declared as JSON."""

    status = 415
    type = "unsupported-media-type"
    title = "Unsupported media type"


class InvalidInput(CorralError):
    """The input is well-formed JSON but not a valid input for the model.

    Models raise it from ``predict`` to reject one input with a message meant for
    the client; Corral raises it when validation against the input type fails.
    """

    status = 422
    type = "validation-error"
    title = "Validation error"


class IdempotencyKeyReused(CorralError):
    """An Idempotency-Key was sent again with a different body or model.

    409 rather than the 422 of the IETF idempotency-key draft: the body is valid; it
    conflicts with the job the key already names."""

    status = 409
    type = "idempotency-key-reused"
    title = "Idempotency key reused"


class _WithErrorId(CorralError):
    """A 500 whose details are only in the server log, under the error id it carries."""

    status = 500

    def __init__(self, detail: str, *, error_id: str | None = None) -> None:
        super().__init__(detail)
        self.error_id = error_id or new_error_id()

    def extra(self) -> dict[str, Any]:
        return {**super().extra(), "error_id": self.error_id}


class ModelError(_WithErrorId):
    """The model raised while computing this request.

    The client sees only the error id; the traceback is in the server log under
    the same id.
    """

    type = "model-error"
    title = "Model error"


class InternalError(_WithErrorId):
    """Corral itself failed on a request (a bug): the client gets only the error id.

    Not a ModelError: ``except ModelError`` must never catch Corral's own failures.
    """

    type = "internal-error"
    title = "Internal server error"


class WorkerCrashed(CorralError):
    """The process computing this request died. No Retry-After: the input may be the cause."""

    status = 502
    type = "worker-crashed"
    title = "Model worker crashed"


class ClientClosedRequest(CorralError):
    """The client closed its connection while its request waited; nobody reads the answer."""

    status = 499
    type = "client-closed-request"
    title = "Client closed request"


class _RetryLater(CorralError):
    """A 503 that tells the client when to try again."""

    status = 503

    def __init__(self, detail: str, *, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}

    def extra(self) -> dict[str, Any]:
        return {**super().extra(), "retry_after": self.retry_after}


class Overloaded(_RetryLater):
    """The model's queue is full."""

    type = "overloaded"
    title = "Model overloaded"


class JobStoreUnavailable(_RetryLater):
    """The job store (SQLite file, Redis) cannot be reached or is locked right now."""

    type = "job-store-unavailable"
    title = "Job store unavailable"


class ModelLoading(_RetryLater):
    """The model has not finished ``load()`` yet."""

    type = "model-loading"
    title = "Model loading"


class ModelFailed(CorralError):
    """The model could not be loaded; retrying the request will not help."""

    status = 503
    type = "model-failed"
    title = "Model failed"


class ModelUnloaded(CorralError):
    """The model is declared but unloaded (by the admin API); it comes back only when loaded."""

    status = 503
    type = "model-unloaded"
    title = "Model unloaded"


class RequestTimeout(CorralError):
    """The request's deadline passed before a result was ready."""

    status = 504
    type = "timeout"
    title = "Request timed out"


def new_error_id() -> str:
    """A short random id that ties a client-facing error to its server log line."""
    return uuid.uuid4().hex[:16]


_BY_TYPE: dict[str, type[CorralError]] = {
    cls.type: cls
    for cls in (
        InvalidJSON, Unauthorized, Forbidden, NotFound, ModelNotFound, VersionNotFound,
        JobNotFound, JobFinished, IdempotencyKeyReused, ModelInline, MethodNotAllowed,
        PayloadTooLarge, UnsupportedMediaType, InvalidInput, ModelError, InternalError,
        WorkerCrashed, ClientClosedRequest, Overloaded, JobStoreUnavailable, ModelLoading,
        ModelFailed,
        ModelUnloaded, RequestTimeout,
    )
}


def error_from_dict(data: dict[str, Any]) -> CorralError:
    """Rebuild an error sent as :meth:`CorralError.to_dict` data.

    An unknown type becomes a plain :class:`CorralError` (a 500), never an exception
    of a class named by the peer.
    """
    cls = _BY_TYPE.get(str(data.get("type")), CorralError)
    detail = str(data.get("detail", ""))
    err: CorralError
    if issubclass(cls, _WithErrorId):
        err = cls(detail, error_id=str(data.get("error_id") or new_error_id()))
    elif issubclass(cls, _RetryLater):
        retry_after = data.get("retry_after")
        err = cls(detail, retry_after=retry_after if type(retry_after) is int else 1)
    elif cls is MethodNotAllowed:
        allowed = data.get("allowed")
        err = MethodNotAllowed(detail, allowed=[str(a) for a in allowed]
                               if isinstance(allowed, list) else [])
    else:
        err = cls(detail)
    errors = data.get("errors")
    err.errors = errors if isinstance(errors, list) else None
    return err


# Every problem type Corral sends, as the OpenAPI document lists them.
PROBLEM_TYPES: tuple[str, ...] = tuple(sorted({*_BY_TYPE, "about:blank"}))
