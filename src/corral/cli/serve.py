"""Running a Server: the supervised process tree, or the development server."""

from __future__ import annotations

import logging
import sys

from ..config import Settings
from ..engine import Engine
from ..server import Server

logger = logging.getLogger(__name__)


def serve_supervised(target: str, server: Server, settings: Settings) -> None:
    """Gunicorn, a dispatcher per model and its replicas, under one supervisor."""
    from ..workers.supervisor import Supervisor

    sys.exit(Supervisor(target, settings, server.catalog(settings)).run())


def serve_dev(server: Server, settings: Settings) -> None:
    """Flask's development server, threaded, models in this process."""
    from werkzeug.serving import run_simple

    from ..workers.http import bind_address

    app = server.create_app(settings)
    engine: Engine = app.extensions["corral.engine"]
    engine.start()
    logger.info("development server on http://%s/docs (not for production)", bind_address(settings))
    run_simple(settings.host, settings.port, app, threaded=True, use_reloader=False)
