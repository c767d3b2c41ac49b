"""The predict endpoint, the one hot path of the API, served below Flask.

``POST /v1/models/<name>/predict`` and ``.../versions/<version>/predict`` are answered
by :class:`Predict` as plain WSGI, in front of the Flask app: a request that is not a
POST to one of those two paths goes on to Flask unchanged. Everything a predict
request gets through Flask it gets here from the same functions: the body read within
its limits (:mod:`.body`), the JSON and input checks, the request id and access log
(:mod:`.requestlog`), CORS headers (:mod:`.cors`), problem documents and the error id
of an unexpected failure (:mod:`.problems`), the request metrics. What it does not pay
for is Flask's own per-request machinery (request context, URL adapter, hooks,
response object), about half of what a no-op request cost in the HTTP worker (see
docs/decisions.md, "The predict path below Flask").

Flask still routes the same URLs (to :meth:`Predict.view`), so that ``OPTIONS``, a
wrong method (405 with ``Allow``) and any path this module does not take as its own
(``/v1/models/x/predict/``) are answered exactly as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from flask import (Flask, Response, g, got_request_exception, request, request_finished,
                   request_started, request_tearing_down)
from werkzeug.wrappers import Request

from .. import metrics
from ..config import Settings
from ..engine import Engine
from ..errors import ClientClosedRequest, CorralError, InvalidInput, RequestTimeout
from ..registry.catalog import Catalog
from ..registry.spec import ModelSpec
from ..schema.inputs import parse_json, validate_inputs
from ..schema.openapi import MIN_REQUEST_TIMEOUT
from ..schema.problems import compact_json, output_documents, problem_document
from .body import read_json_body
from .cors import Cors
from .problems import PROBLEM_JSON, internal_error, status_line
from .requestlog import HEADER as REQUEST_ID_HEADER
from .requestlog import log_access, request_id_from
from .routes import parse_seconds

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

logger = logging.getLogger(__name__)

PREFIX = "/v1/models/"
TIMEOUT_HEADER = "X-Request-Timeout"
JSON = "application/json"


class Answer:
    """What a predict request gets: status, body, extra headers, and for the access log
    the model version that computed it and its batch size."""

    __slots__ = ("status", "body", "content_type", "headers", "model", "batch")

    def __init__(self, status: int, body: bytes, content_type: str = JSON,
                 headers: dict[str, str] | None = None, model: str | None = None,
                 batch: int = 0) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers
        self.model = model
        self.batch = batch

    @classmethod
    def problem(cls, err: CorralError) -> Answer:
        return cls(err.status, compact_json(problem_document(err)).encode(), PROBLEM_JSON,
                   err.headers())


class Predict:
    """Predict requests for one catalog, engine and settings."""

    def __init__(self, catalog: Catalog, engine: Engine, settings: Settings,
                 before: Callable[[], None], cors: Cors | None) -> None:
        self.catalog = catalog
        self.engine = engine
        self.settings = settings
        # Starts the engine and jobs (each returns at once if started in this process), as
        # Flask's before_request does for its own routes.
        self.before = before
        self.cors = cors
        self._own_hooks: tuple[int, ...] | None = None  # until sealed, Flask answers

    # -- below Flask ------------------------------------------------------------------

    def middleware(self, flask_app: Flask, app: WSGIApplication) -> WSGIApplication:
        """``app`` (``flask_app``'s WSGI callable) with predict requests answered here,
        before they reach it; call :meth:`seal` once Corral's own hooks are installed."""

        def wsgi(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
            target = _target(environ) if environ.get("REQUEST_METHOD") == "POST" else None
            if target is None or _hooks(flask_app) != self._own_hooks:
                # Not predict, or hooks added to the app after Corral's (an auth check, an
                # instrumentation): Flask runs them, and Predict.view answers.
                return app(environ, start_response)
            return self.serve(environ, start_response, *target)

        return wsgi

    def seal(self, flask_app: Flask) -> None:
        """The app's request hooks are Corral's own from here on."""
        self._own_hooks = _hooks(flask_app)

    def serve(self, environ: WSGIEnvironment, start_response: StartResponse, name: str,
              version: str | None) -> Iterable[bytes]:
        started = time.perf_counter()
        request_id = request_id_from(environ.get("HTTP_X_REQUEST_ID", ""))
        try:
            self.before()
        except Exception as exc:  # a bug: a 500 with an error id
            answer = Answer.problem(internal_error(exc, "POST", _path(environ)))
        else:
            answer = self.answer(environ, name, version, request_id)
        headers = [("Content-Type", answer.content_type),
                   ("Content-Length", str(len(answer.body))),
                   (REQUEST_ID_HEADER, request_id)]
        if answer.headers:
            headers.extend(answer.headers.items())
        if self.cors is not None:
            headers.extend(self.cors.headers(environ.get("HTTP_ORIGIN"), preflight=None))
        if self.settings.access_log:
            try:
                log_access(environ.get("REMOTE_ADDR"), "POST", _path(environ),
                                _decode(environ.get("QUERY_STRING", "")), answer.status,
                                started, answer.model, answer.batch, request_id)
            except Exception:  # a logging filter or handler that raises loses the line only
                logger.exception("writing the access log line of request %s failed",
                                 request_id)
        start_response(status_line(answer.status), headers)
        return [answer.body]

    # -- through Flask (the same answer, for the paths the middleware leaves to it) ----

    def view(self, name: str, version: str | None = None) -> Response:
        answer = self.answer(request.environ, name, version, g.request_id)
        g.model, g.batch = answer.model, answer.batch
        return Response(answer.body, status=status_line(answer.status),
                        content_type=answer.content_type, headers=answer.headers)

    # -- the answer -------------------------------------------------------------------

    def answer(self, environ: WSGIEnvironment, name: str, version: str | None,
               request_id: str) -> Answer:
        """The answer to one predict request, whatever happens: a CorralError becomes its
        problem document, anything else (a bug) a 500 with an error id."""
        try:
            spec = self.catalog.resolve(name, version)  # unknown names are not counted
        except CorralError as err:
            return Answer.problem(err)
        started = time.perf_counter()
        validated: list[str] = []  # the model's key once the inputs are valid: the log's
        try:
            answer = self._predict(spec, environ, request_id, validated)
        except CorralError as err:
            answer = Answer.problem(err)
        except Exception as exc:
            answer = Answer.problem(internal_error(exc, "POST", _path(environ)))
        answer.model = validated[0] if validated else None
        metrics.labelled(metrics.REQUEST_DURATION, spec.name, spec.version).observe(
            time.perf_counter() - started)
        metrics.labelled(metrics.REQUESTS, spec.name, spec.version, str(answer.status)).inc()
        return answer

    def _predict(self, spec: ModelSpec, environ: WSGIEnvironment, request_id: str,
                 validated: list[str]) -> Answer:
        settings = self.settings
        deadline = time.monotonic() + self._timeout(spec, environ.get("HTTP_X_REQUEST_TIMEOUT"))
        body = read_json_body(Request(environ), settings.max_body_bytes)
        payload = parse_json(body, settings.max_json_depth)
        inputs, is_batch = validate_inputs(spec.input_type, body, payload,
                                           min(settings.max_items, spec.batching.max_queue))
        validated.append(str(spec.key))
        size = spec.input_size([i.value for i in inputs]) if spec.size_of else None
        handle = self.engine.submit(spec.key, inputs, deadline, request_id=request_id,
                                    size=size)
        try:
            outputs = handle.result(deadline - time.monotonic(), environ.get("gunicorn.socket"))
        except (RequestTimeout, ClientClosedRequest):
            handle.cancel()
            raise
        documents = output_documents(outputs, is_batch, spec.per_item_errors)
        body = b"[" + b",".join(documents) + b"]" if is_batch else documents[0]
        return Answer(200, body, batch=handle.batch)

    @staticmethod
    def _timeout(spec: ModelSpec, raw: str | None) -> float:
        """The request's time budget: the model's timeout, or less if the client asks."""
        limit = spec.batching.timeout
        if raw is None:
            return limit
        asked = parse_seconds(raw, ["header", TIMEOUT_HEADER], TIMEOUT_HEADER)
        if asked < MIN_REQUEST_TIMEOUT:
            raise InvalidInput(
                f"{TIMEOUT_HEADER} must be at least {MIN_REQUEST_TIMEOUT} seconds; got {raw}.",
                errors=[{"loc": ["header", TIMEOUT_HEADER],
                         "msg": f"Input should be greater than or equal to {MIN_REQUEST_TIMEOUT}",
                         "type": "greater_than_equal"}],
            )
        return min(asked, limit)


def _target(environ: WSGIEnvironment) -> tuple[str, str | None] | None:
    """(name, version) of a predict path, exactly as Flask's rules spell it; None for any
    other path (it goes on to Flask)."""
    path: str = environ.get("PATH_INFO", "")
    if not path.startswith(PREFIX):
        return None
    parts = _decode(path[len(PREFIX):]).split("/")
    if len(parts) == 2 and parts[1] == "predict" and parts[0]:
        return parts[0], None
    if len(parts) == 4 and parts[1] == "versions" and parts[3] == "predict" \
            and parts[0] and parts[2]:
        return parts[0], parts[2]
    return None


def _hooks(app: Flask) -> tuple[int, ...]:
    """What the app runs around a request besides the view: its hooks, and whether any
    receiver listens to Flask's request signals."""
    return (sum(map(len, app.before_request_funcs.values())),
            sum(map(len, app.after_request_funcs.values())),
            sum(map(len, app.teardown_request_funcs.values())),
            sum(map(len, app.url_value_preprocessors.values())),
            bool(request_started.receivers or request_finished.receivers
                 or got_request_exception.receivers or request_tearing_down.receivers))


def _decode(raw: str) -> str:
    """A WSGI path (bytes as latin-1) as text, as Werkzeug decodes it."""
    return raw.encode("latin-1").decode("utf-8", "replace")


def _path(environ: WSGIEnvironment) -> str:
    """The path as Werkzeug's ``request.path`` gives it (below any mount point)."""
    return "/" + _decode(environ.get("PATH_INFO", "")).lstrip("/")
