"""Request ids and the request log.

Every response carries ``X-Request-ID``: the client's own (letters, digits and
``._:/=+-``, at most 128 characters) or a new one: 32 hex digits, a random prefix drawn
once per process and a counter, so that no request pays a system call for randomness. The id travels with the
request to the batch that computes it, so the model's log lines during that batch carry
it too. With ``CORRAL_ACCESS_LOG=1`` each request gets one line (logger
``corral.access``): client address, method, path, status, latency, model version,
batch size and request id; as JSON fields with ``CORRAL_LOG_FORMAT=json``. Behind
``CORRAL_PROXY_HOPS`` proxies, the client address is taken from their
``X-Forwarded-For``, trusting exactly that many hops.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time

from flask import Flask, Response, g, request
from werkzeug.middleware.proxy_fix import ProxyFix

from ..config import Settings

HEADER = "X-Request-ID"
_VALID = re.compile(r"^[A-Za-z0-9._:/=+\-]{1,128}$")

access = logging.getLogger("corral.access")


class _NewIds:
    """Request ids unique across processes and restarts: a random prefix per process
    (drawn again after a fork) and a counter."""

    def __init__(self) -> None:
        self._pid = -1
        self._prefix = ""
        self._count = itertools.count()

    def __call__(self) -> str:
        if self._pid != os.getpid():
            self._prefix, self._count = os.urandom(8).hex(), itertools.count()
            self._pid = os.getpid()
        return f"{self._prefix}{next(self._count):016x}"


new_request_id = _NewIds()


def request_id_from(given: str) -> str:
    """The client's ``X-Request-ID`` when it is a valid one, else a new id."""
    return given if given and _VALID.fullmatch(given) else new_request_id()


def log_access(client: str | None, method: str, path: str, query: str, status: int,
               started: float, model: str | None, batch: int, request_id: str) -> None:
    """The request's line on ``corral.access`` (``CORRAL_ACCESS_LOG=1``)."""
    ms = (time.perf_counter() - started) * 1000
    shown_model = model or "-"
    full_path = f"{path}?{query}" if query else path
    access.info('%s "%s %s" %d %.1fms model=%s batch=%s id=%s', client, method, full_path,
                status, ms, shown_model, batch or "-", request_id, extra={"request": {
                    "client": client, "method": method, "path": path, "status": status,
                    "latency_ms": round(ms, 3), "model": shown_model,
                    "batch": batch or None, "request_id": request_id}})


def install_request_log(app: Flask, settings: Settings) -> None:
    if settings.proxy_hops:
        hops = settings.proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops,  # type: ignore[method-assign]
                                x_host=hops)

    @app.before_request
    def take_request_id() -> None:
        g.request_id = request_id_from(request.headers.get(HEADER, ""))
        g.started = time.perf_counter()

    @app.after_request
    def log_request(response: Response) -> Response:
        request_id = getattr(g, "request_id", None)
        if request_id is None:  # the request failed before before_request ran
            return response
        response.headers[HEADER] = request_id
        if settings.access_log:
            log_access(request.remote_addr, request.method, request.path,
                           request.query_string.decode("utf-8", "replace"),
                           response.status_code,
                           g.started, str(getattr(g, "model", "") or ""),
                           getattr(g, "batch", 0) or 0, request_id)
        return response
