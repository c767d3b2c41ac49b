"""Server: a set of models served together, and the composition root.

``app = corral.Server([SentimentModel, IrisModel])`` declares what is served.
The Server builds every part from a :class:`~corral.config.Settings`: the
catalog of model specs, the engine that runs them and the Flask app in front.
It is itself a WSGI application (models run in-process), so ``app.py:app`` works
under uWSGI, Waitress or any WSGI server.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from .config import Settings
from .errors import StartupError
from .model import Model
from .registry.catalog import Catalog
from .registry.spec import build_spec
from .schema.openapi import ApiInfo

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment
    from flask import Flask

    from .engine import Engine


class Server:
    """The models one Corral server serves."""

    def __init__(self, models: Sequence[type[Model]], *, title: str = "Corral",
                 version: str = "v1", description: str | None = None) -> None:
        """``title``, ``version`` and ``description`` are the API's, as the OpenAPI document
        and the Swagger UI page show them (``info``); the description is Markdown."""
        models = list(models)
        for m in models:
            if not (isinstance(m, type) and issubclass(m, Model)):
                raise StartupError(
                    f"Server() takes corral.Model subclasses; got {m!r}. Pass the class, "
                    "not an instance."
                )
        self.models = models
        self.info = ApiInfo(title, version, description)
        self._wsgi: Flask | None = None
        self._lock = threading.Lock()

    def catalog(self, settings: Settings) -> Catalog:
        """Check every model and combine it with its settings overrides."""
        catalog = Catalog(build_spec(m, settings) for m in self.models)
        catalog.check_overrides(settings.models)
        return catalog

    def create_app(self, settings: Settings, engine: Engine | None = None,
                   runtime_dir: str | None = None) -> Flask:
        """The Flask app. With no engine given, models run in this process, unless
        ``runtime_dir`` (or ``settings.runtime_dir``) names the runtime directory of a
        running process tree (``corral serve --runtime-dir``): then requests go to its
        dispatcher, and jobs to its jobs process, except for inline models
        (``placement = "inline"``), which this process loads and runs itself."""
        from .api.app import create_app
        from .jobs.backend import open_service

        catalog = self.catalog(settings)
        runtime_dir = runtime_dir or settings.runtime_dir
        wake_path = None
        inline_keys: frozenset[str] = frozenset()
        job_settings = settings
        if runtime_dir:
            from .process.runtime import Runtime

            runtime = Runtime.find(runtime_dir)
            wake_path = runtime.jobs_wake
            job_settings = runtime.read_plan()[1]  # the tree's data directory and broker
            if engine is None:
                from .process.client import DispatcherEngine

                engine = DispatcherEngine(runtime)
            # The tree decides: what it runs goes there, the rest runs here, in each HTTP
            # worker (the supervisor left inline models out, by its own settings).
            in_tree = {entry.key for entry in runtime.read_models()}
            inline = [spec for spec in catalog if str(spec.key) not in in_tree]
            for spec in inline:
                if not spec.inline:
                    logger.warning(
                        "model %s is not among the models of the process tree in %s (declared "
                        "placement = \"inline\" there?): it runs inline, in this process",
                        spec.key, runtime.path)
            inline_keys = frozenset(str(spec.key) for spec in inline)
            if inline:
                from .placement import PlacedEngine

                engine = PlacedEngine(engine, inline, stall_grace=settings.stall_grace,
                                      warm_up=settings.warm_up,
                                      memory_warn_mb=settings.inline_memory_warn_mb)
        elif engine is None:
            from .inprocess.engine import InProcessEngine

            engine = InProcessEngine(catalog, stall_grace=settings.stall_grace,
                                     warm_up=settings.warm_up)
        jobs = open_service(job_settings, engine, catalog, wake_path, inline_keys)
        app = create_app(catalog, engine, settings, jobs, self.info)
        app.extensions["corral.engine"] = engine
        app.extensions["corral.jobs"] = jobs
        return app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """WSGI entry point for servers that import ``app.py:app`` (settings from CORRAL_*)."""
        if self._wsgi is None:
            with self._lock:
                if self._wsgi is None:
                    self._wsgi = self.create_app(Settings())
        result: Iterable[bytes] = self._wsgi(environ, start_response)
        return result

