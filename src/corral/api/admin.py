"""The admin API: load, unload and scale a declared model version at run time.

Off unless ``CORRAL_ADMIN_TOKEN`` is set; then every call needs
``Authorization: Bearer <token>`` (401 without it, 403 with another one; compared in
constant time). The operations act on declared model versions only, named by the
path, and return at once with 202: replicas load, stop or start in the background,
and ``GET /v1/models/{name}`` shows the state.
"""

from __future__ import annotations

import hmac

from flask import Flask, Response, request
from pydantic import ValidationError

from ..config import Settings
from ..engine import Engine
from ..errors import Forbidden, InvalidInput, Unauthorized
from ..registry.catalog import Catalog
from ..registry.spec import ModelSpec
from ..schema.api_types import AdminAccepted, ReplicasRequest
from ..schema.inputs import parse_json
from .body import read_json_body
from .problems import compact_json, status_line


class Admin:
    """Admin handlers bound to one catalog and engine."""

    def __init__(self, catalog: Catalog, engine: Engine, settings: Settings) -> None:
        assert settings.admin_token is not None
        self.catalog = catalog
        self.engine = engine
        self.settings = settings
        self._token = settings.admin_token.get_secret_value().encode()

    def register(self, app: Flask) -> None:
        for prefix, suffix in (("/v1/models/<name>", ""),
                               ("/v1/models/<name>/versions/<version>", "_version")):
            app.add_url_rule(f"{prefix}/load", f"admin_load{suffix}", self.load,
                             methods=["POST"])
            app.add_url_rule(f"{prefix}/unload", f"admin_unload{suffix}", self.unload,
                             methods=["POST"])
            app.add_url_rule(f"{prefix}/replicas", f"admin_replicas{suffix}", self.replicas,
                             methods=["PUT"])

    def _authorize(self) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("The admin API needs an Authorization: Bearer <token> header.")
        if not hmac.compare_digest(token.strip().encode(), self._token):
            raise Forbidden("The bearer token is not the admin token of this server.")

    def _accepted(self, spec: ModelSpec, replicas: int) -> Response:
        """202 with the replicas now wanted and the state as last reported (it follows)."""
        status = self.engine.status(spec.key)
        body = AdminAccepted(name=spec.name, version=spec.version, replicas=replicas,
                             state="unloaded" if replicas == 0 else status.state)
        return Response(compact_json(body.model_dump(mode="json")), status=status_line(202),
                        mimetype="application/json")

    def load(self, name: str, version: str | None = None) -> Response:
        self._authorize()
        spec = self.catalog.resolve(name, version)
        current = self.engine.status(spec.key).replicas
        self.engine.load(spec.key)
        return self._accepted(spec, current or spec.replicas)

    def unload(self, name: str, version: str | None = None) -> Response:
        self._authorize()
        spec = self.catalog.resolve(name, version)
        self.engine.unload(spec.key)
        return self._accepted(spec, 0)

    def replicas(self, name: str, version: str | None = None) -> Response:
        self._authorize()
        spec = self.catalog.resolve(name, version)
        body = read_json_body(request, self.settings.max_body_bytes)
        parse_json(body, self.settings.max_json_depth)
        try:
            wanted = ReplicasRequest.model_validate_json(body, strict=True)
        except ValidationError as exc:
            errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
                      for e in exc.errors(include_url=False, include_context=False,
                                          include_input=False)]
            raise InvalidInput("Send {\"replicas\": N} with N from 0 to 64.",
                               errors=errors) from None
        self.engine.set_replicas(spec.key, wanted.replicas)
        return self._accepted(spec, wanted.replicas)
