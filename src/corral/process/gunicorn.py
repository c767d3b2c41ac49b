"""The Gunicorn master, as a child of the supervisor: ``python -m corral.process http RUNTIME_DIR``.

Each HTTP worker builds its Flask app after the fork (and, for gevent, after
monkey-patching), with a :class:`DispatcherEngine`: it parses, validates and
encodes, and never loads a model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Flask
from gunicorn import util as gunicorn_util
from gunicorn.app.base import BaseApplication

from .. import metrics
from ..discover import load_server, warn_heavy_imports
from ..api.problems import compact_json
from ..config import Settings
from ..engine import Engine
from ..log import configure_logging
from ..placement import PlacedEngine
from .runtime import Runtime

logger = logging.getLogger(__name__)


def bind_address(settings: Settings) -> str:
    host = settings.host
    return f"[{host}]:{settings.port}" if ":" in host else f"{host}:{settings.port}"


def _engine_of(app: Flask) -> Engine:
    engine: Engine = app.extensions["corral.engine"]
    return engine


def _post_worker_init(worker: Any) -> None:
    # After the fork and, for gevent, after monkey-patching.
    warn_heavy_imports(f"HTTP worker {worker.pid}")
    engine = _engine_of(worker.wsgi)
    engine.start()
    if isinstance(engine, PlacedEngine):
        # This worker's own inline models: loaded before it takes requests, within
        # Gunicorn's worker timeout (the arbiter kills a worker silent for that long).
        engine.wait_loaded(worker.cfg.timeout / 2)
    worker.wsgi.extensions["corral.jobs"].start()  # jobs of inline models waiting, if any


def _child_exit(server: Any, worker: Any) -> None:
    metrics.process_exited(worker.pid)  # runs in the Gunicorn master


def _worker_exit(server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    if isinstance(app, Flask):
        app.extensions["corral.jobs"].stop()  # gives back jobs of inline models it runs
        _engine_of(app).stop()


def _write_problem(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """Gunicorn's own error answers (414, 431, bad headers...) as problem+json, not HTML."""
    problem = {"type": "internal-error" if status_int >= 500 else "about:blank",
               "title": reason, "status": status_int, "detail": mesg or reason}
    body = compact_json(problem).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/problem+json\r\nContent-Length: {len(body)}\r\n\r\n")
    gunicorn_util.write_nonblock(sock, head.encode("latin-1") + body)


class GunicornServer(BaseApplication):  # type: ignore[misc]
    """Gunicorn configured from Settings; each worker calls ``app_factory`` after the fork."""

    def __init__(self, settings: Settings, app_factory: Callable[[], Flask]) -> None:
        self.settings = settings
        self.app_factory = app_factory
        # Gunicorn answers requests it cannot parse itself, before any app sees them;
        # its workers call util.write_error for that, so that one function is replaced.
        gunicorn_util.write_error = _write_problem
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        options: dict[str, Any] = {
            "bind": [bind_address(s)],
            "workers": s.workers,
            "worker_class": s.worker_class,
            "threads": s.threads,
            "worker_connections": s.worker_connections,
            "timeout": s.timeout,
            "graceful_timeout": s.graceful_timeout,
            "keepalive": s.keepalive,
            "max_requests": s.max_requests,
            "max_requests_jitter": s.max_requests_jitter,
            "errorlog": "-",
            "loglevel": s.log_level,
            "proc_name": "corral",
            "post_worker_init": _post_worker_init,
            "worker_exit": _worker_exit,
            "child_exit": _child_exit,
        }
        if "control_socket_disable" in self.cfg.settings:
            # Gunicorn's control socket has one fixed path per user: two servers would clash.
            options["control_socket_disable"] = True
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return self.app_factory()


def main(argv: list[str]) -> int:
    from .client import DispatcherEngine

    runtime = Runtime(argv[0])
    target, settings = runtime.read_plan()
    configure_logging(settings.log_level, settings.log_format)
    server = load_server(target)
    GunicornServer(settings, lambda: server.create_app(settings, DispatcherEngine(runtime),
                                                       runtime_dir=str(runtime.path))).run()
    return 0

