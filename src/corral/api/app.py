"""The Flask application factory."""

from __future__ import annotations

from flask import Flask, Response, redirect

from ..config import Settings
from ..engine import Engine
from ..jobs.service import JobService
from ..registry.catalog import Catalog
from ..schema.openapi import ApiInfo, build_openapi
from .docs import install_docs
from .jobs import JobRoutes
from .cors import install_cors
from .problems import install_error_handlers
from .requestlog import install_request_log
from .routes import Routes


def create_app(catalog: Catalog, engine: Engine, settings: Settings, jobs: JobService,
               info: ApiInfo = ApiInfo()) -> Flask:
    """A Flask app serving the catalog's models through the engine.

    The engine is started lazily on the first request, and again after a fork, so
    the app works under any WSGI server; Corral's own server starts it earlier.
    """
    app = Flask("corral")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.url_map.merge_slashes = False  # "//v1//models" is a 404, not a redirect
    app.url_map.strict_slashes = False  # "/v1/models/" is "/v1/models"
    install_error_handlers(app)
    install_request_log(app, settings)
    Routes(catalog, engine, settings).register(app)
    waiters = settings.worker_connections if settings.worker_class == "gevent" else settings.threads
    JobRoutes(catalog, jobs, settings, max_waiters=waiters // 2).register(app)
    if settings.admin_token is not None:
        from .admin import Admin

        Admin(catalog, engine, settings).register(app)
    install_docs(app, build_openapi(catalog, settings, info))

    @app.get("/")
    def index() -> Response:
        return redirect("docs", code=302)  # type: ignore[return-value]

    @app.before_request
    def start_engine() -> None:
        engine.start()
        jobs.start()

    if settings.cors_origins:
        install_cors(app, settings.cors_origins)

    return app
