"""Running a Server: under Gunicorn (embedded) or the development server."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from ..config import Settings
from ..engine import Engine
from ..server import Server
from .discover import warn_heavy_imports

logger = logging.getLogger(__name__)


def _engine_of(app: Flask) -> Engine:
    engine: Engine = app.extensions["corral.engine"]
    return engine


def _post_worker_init(worker: Any) -> None:
    # After fork and, for gevent, after monkey-patching: start loading models now,
    # not at the first request.
    warn_heavy_imports(f"HTTP worker {worker.pid}")
    _engine_of(worker.wsgi).start()


def _worker_exit(server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    if isinstance(app, Flask):
        _engine_of(app).stop()


def bind_address(settings: Settings) -> str:
    host = settings.host
    return f"[{host}]:{settings.port}" if ":" in host else f"{host}:{settings.port}"


class GunicornServer(BaseApplication):  # type: ignore[misc]
    """Gunicorn configured from Settings; each worker builds its own app after fork."""

    def __init__(self, server: Server, settings: Settings) -> None:
        self.server = server
        self.settings = settings
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
            "errorlog": "-",
            "loglevel": s.log_level,
            "proc_name": "corral",
            "post_worker_init": _post_worker_init,
            "worker_exit": _worker_exit,
        }
        if s.access_log:
            options["accesslog"] = "-"
        if "control_socket_disable" in self.cfg.settings:
            # Gunicorn's control socket has one fixed path per user: two servers would clash.
            options["control_socket_disable"] = True
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return self.server.create_app(self.settings)


def serve_gunicorn(server: Server, settings: Settings) -> None:
    GunicornServer(server, settings).run()


def serve_dev(server: Server, settings: Settings) -> None:
    """Flask's development server, threaded, models in this process."""
    from werkzeug.serving import run_simple

    app = server.create_app(settings)
    _engine_of(app).start()
    logger.info("development server on http://%s/docs (not for production)", bind_address(settings))
    run_simple(settings.host, settings.port, app, threaded=True, use_reloader=False)
