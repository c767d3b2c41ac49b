"""Corral's WSGI app for any WSGI server (Gunicorn, uWSGI, Waitress, Tornado's container).

``corral.wsgi:application`` serves the app that ``CORRAL_APP`` names
(``path/to/app.py`` or ``module:attr``), with every setting from the ``CORRAL_*``
environment. ``create_app`` is the
factory, for servers that call one (``gunicorn 'corral.wsgi:create_app("app.py")'``)
and for mounting Corral inside another WSGI app.

Models run in-process, in each worker of the server, unless ``CORRAL_RUNTIME_DIR``
names the runtime directory of a running ``corral models`` (or ``corral serve``):
then every worker sends its requests to that process tree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import Settings
from .discover import load_server
from .errors import StartupError

if TYPE_CHECKING:
    from flask import Flask


application: Flask  # below, when CORRAL_APP is set


def create_app(app: str | None = None, **settings: Any) -> Flask:
    """The Flask app serving ``app`` (default ``CORRAL_APP``); ``settings`` override the
    ``CORRAL_*`` environment (e.g. ``runtime_dir="/run/corral"``)."""
    if app:
        settings["app"] = app
    built = Settings(**settings)
    if not built.app:
        raise StartupError("Set CORRAL_APP to the models to serve, e.g. CORRAL_APP=app.py, "
                           "or pass the app to create_app().")
    flask_app = load_server(built.app).create_app(built)
    # Load the models now rather than at the first request, so that /readyz means it. The
    # engine starts again in a process forked after this (a server that preloads apps).
    flask_app.extensions["corral.engine"].start()
    flask_app.extensions["corral.jobs"].start()
    return flask_app


if Settings().app:
    # Made at import (some servers, uWSGI among them, read the module's dict directly).
    application = create_app()
else:

    def __getattr__(name: str) -> Any:
        # Imported for create_app() alone, with no CORRAL_APP: say what is missing.
        if name == "application":
            create_app()  # raises StartupError: set CORRAL_APP
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
