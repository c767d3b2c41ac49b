"""The v1 endpoints: model listing, health and readiness (predict is in :mod:`.predict`)."""

from __future__ import annotations

import re
from typing import Any

from flask import Flask, Response

from ..config import Settings
from ..engine import Engine
from .. import metrics
from ..errors import InvalidInput
from ..registry.catalog import Catalog
from ..schema.api_types import (
    BatchingInfo,
    ModelInfo,
    ModelList,
    ModelReadiness,
    Readiness,
    VersionInfo,
)
from .problems import compact_json, status_line

# A plain decimal number, as in JSON (no "1_0", "0x10", "inf" or non-ASCII digits).
SECONDS = re.compile(r"^[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?$")


def json_response(data: Any, status: int = 200,
                  headers: dict[str, str] | None = None) -> Response:
    return Response(compact_json(data), status=status_line(status),
                    mimetype="application/json", headers=headers)


def parse_seconds(raw: str, loc: list[str | int], what: str) -> float:
    """A number of seconds sent in a header or query parameter, as plain JSON spells a
    number; anything else is a 422 naming ``loc``."""
    if not SECONDS.match(raw):
        raise InvalidInput(f"{what} must be a number of seconds, such as 2 or 0.5; got "
                           f"{raw!r}.", errors=[{"loc": loc, "msg": "Input should be a valid "
                                                 "number", "type": "float_parsing"}])
    return float(raw)


class Routes:
    """Request handlers bound to one catalog, engine and settings."""

    def __init__(self, catalog: Catalog, engine: Engine, settings: Settings) -> None:
        self.catalog = catalog
        self.engine = engine
        self.settings = settings
        # JSON Schemas of each version's input and output, for the detail endpoint.
        self.schemas = {
            spec.key: (spec.input_type.model_json_schema(),
                       spec.output_type.model_json_schema(mode="serialization"))
            for spec in catalog
        }

    def register(self, app: Flask) -> None:
        app.add_url_rule("/v1/models", "list_models", self.list_models, methods=["GET"])
        app.add_url_rule("/v1/models/<name>", "describe_model", self.describe_model,
                         methods=["GET"])
        app.add_url_rule("/healthz", "healthz", self.healthz, methods=["GET"])
        app.add_url_rule("/readyz", "readyz", self.readyz, methods=["GET"])
        app.add_url_rule("/metrics", "metrics", self.metrics, methods=["GET"])

    # -- models -----------------------------------------------------------------------

    def _info(self, name: str, detail: bool) -> ModelInfo:
        default = self.catalog.default_version(name)
        versions = []
        for spec in self.catalog.versions(name):
            status = self.engine.status(spec.key)
            b = spec.batching
            versions.append(VersionInfo(
                version=spec.version,
                default=spec.version == default,
                state=status.state,
                error=status.error,
                replicas=status.replicas,
                replicas_ready=status.replicas_ready,
                batching=BatchingInfo(max_size=b.max_size, max_wait_ms=b.max_wait_ms,
                                      max_queue=b.max_queue, timeout=b.timeout),
                predict_url=f"/v1/models/{name}/versions/{spec.version}/predict",
                input_schema=self.schemas[spec.key][0] if detail else None,
                output_schema=self.schemas[spec.key][1] if detail else None,
            ))
        return ModelInfo(name=name, description=self.catalog.resolve(name).description,
                         default_version=default, versions=versions)

    def list_models(self) -> Response:
        models = ModelList(models=[self._info(n, detail=False) for n in self.catalog.names()])
        return json_response(models.model_dump(mode="json", exclude_none=True))

    def describe_model(self, name: str) -> Response:
        self.catalog.resolve(name)  # 404 with the known names
        return json_response(self._info(name, detail=True).model_dump(mode="json",
                                                                       exclude_none=True))

    # -- health -----------------------------------------------------------------------

    def metrics(self) -> Response:
        body, content_type = metrics.render()
        return Response(body, content_type=content_type)

    def healthz(self) -> Response:
        return json_response({"status": "ok"})

    def readyz(self) -> Response:
        models = []
        for spec in self.catalog:
            status = self.engine.status(spec.key)
            models.append(ModelReadiness(name=spec.name, version=spec.version,
                                         state=status.state, error=status.error))
        states = {m.state for m in models}
        # Ready means "can serve": some model is ready, none is still loading, and a failed
        # one counts against it unless the settings say otherwise. Unloaded ones do not count.
        ready = ("ready" in states and "loading" not in states
                 and ("failed" not in states or self.settings.ready_with_failed_models))
        report = Readiness(ready=ready, models=models)
        return json_response(report.model_dump(mode="json", exclude_none=True),
                              200 if ready else 503)
