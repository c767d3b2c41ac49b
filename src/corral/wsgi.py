"""Corral's WSGI app for any WSGI server (Gunicorn, uWSGI, Waitress, Tornado's container).

``corral.wsgi:application`` serves the app that ``CORRAL_APP`` names
(``path/to/app.py`` or ``module:attr``), with every setting from the ``CORRAL_*``
environment; it is built when the server first asks for it. ``create_app`` is the
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


application: Flask  # made by __getattr__ below, on first access


def create_app(app: str | None = None, **settings: Any) -> Flask:
    """The Flask app serving ``app`` (default ``CORRAL_APP``); ``settings`` override the
    ``CORRAL_*`` environment (e.g. ``runtime_dir="/run/corral"``)."""
    if app:
        settings["app"] = app
    built = Settings(**settings)
    if not built.app:
        raise StartupError("Set CORRAL_APP to the models to serve, e.g. CORRAL_APP=app.py, "
                           "or pass the app to create_app().")
    return load_server(built.app).create_app(built)


def __getattr__(name: str) -> Any:
    # ``application`` is made on first access, so that importing this module for
    # create_app() needs no CORRAL_APP.
    if name == "application":
        global application
        application = create_app()
        return application
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
