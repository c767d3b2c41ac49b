"""Running a Server: the supervised process tree, or the development server."""

from __future__ import annotations

import logging
import sys

import click

from ..config import Settings
from ..engine import Engine
from ..server import Server

logger = logging.getLogger(__name__)


def serve_supervised(target: str, server: Server, settings: Settings, http: bool = True) -> None:
    """Gunicorn (unless ``http`` is false), the dispatcher and the replicas, under one
    supervisor."""
    from ..errors import StartupError
    from ..process.supervisor import Supervisor

    try:
        supervisor = Supervisor(target, settings, server.catalog(settings), http=http)
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(supervisor.run())


def serve_dev(server: Server, settings: Settings) -> None:
    """Flask's development server, threaded, models in this process."""
    from werkzeug.serving import run_simple

    from ..process.gunicorn import bind_address

    from ..inprocess.engine import InProcessEngine

    engine: Engine = InProcessEngine(server.catalog(settings), stall_grace=settings.stall_grace)
    app = server.create_app(settings, engine)
    engine.start()
    logger.info("development server on http://%s/docs (not for production)", bind_address(settings))
    run_simple(settings.host, settings.port, app, threaded=True, use_reloader=False)
