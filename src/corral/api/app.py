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
from .cors import Cors, install_cors
from .predict import Predict
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

    def start_engine() -> None:
        engine.start()
        jobs.start()

    cors = Cors(settings.cors_origins) if settings.cors_origins else None
    predict = Predict(catalog, engine, settings, before=start_engine, cors=cors)
    for rule, endpoint in (("/v1/models/<name>/predict", "predict"),
                           ("/v1/models/<name>/versions/<version>/predict", "predict_version")):
        app.add_url_rule(rule, endpoint, predict.view, methods=["POST"])
    # Predict requests are answered below Flask (api/predict.py); ProxyFix, installed
    # with the request log, goes around both so that they see the same client address.
    app.wsgi_app = predict.middleware(app, app.wsgi_app)  # type: ignore[method-assign,assignment]
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

    app.before_request(start_engine)
    if cors is not None:
        install_cors(app, cors)
    predict.seal(app)

    return app
