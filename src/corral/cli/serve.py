"""Running a Server: the supervised process tree, or the development server."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from ..config import Settings
from ..engine import Engine
from ..server import Server

logger = logging.getLogger(__name__)


def serve_supervised(target: str, server: Server, settings: Settings, http: bool = True,
                     jobs: bool = True, inline: bool = True) -> None:
    """Gunicorn (unless ``http`` is false), the dispatcher, the replicas and the jobs
    process (if ``jobs``), under one supervisor. Inline models get no replica process
    unless ``inline`` is false (no HTTP worker will run them)."""
    from ..errors import StartupError
    from ..process.supervisor import Supervisor

    try:
        supervisor = Supervisor(target, settings, server.catalog(settings), http=http,
                                jobs=jobs, inline=inline)
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(supervisor.run())


def serve_dev(target: str, server: Server, settings: Settings, reload: bool = False) -> None:
    """Flask's development server, threaded, models in this process.

    With ``reload``, Werkzeug's reloader runs the server in a child process and starts
    a new one (models loaded again) when the app file or any module it imported changes.
    """
    from werkzeug.serving import run_simple

    from ..process.gunicorn import bind_address

    from ..inprocess.engine import InProcessEngine

    engine: Engine = InProcessEngine(server.catalog(settings), stall_grace=settings.stall_grace,
                                     warm_up=settings.warm_up)
    app = server.create_app(settings, engine)
    if not reload or os.environ.get("WERKZEUG_RUN_MAIN") == "true":
        engine.start()  # not in the reloader's watching parent: only where it serves
        app.extensions["corral.jobs"].start()
    logger.info("development server on http://%s/docs (not for production)", bind_address(settings))
    app_file = Path(target.partition(":")[0])
    extra = [str(app_file.resolve())] if app_file.suffix == ".py" and app_file.exists() else []
    run_simple(settings.host, settings.port, app, threaded=True, use_reloader=reload,
               extra_files=extra)
