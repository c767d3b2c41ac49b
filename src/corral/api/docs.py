"""Swagger UI, served from the files of the swagger-ui-bundle-v2 package (no CDN).

The page points at ``openapi.json`` by a relative URL, so it also works when the
application is mounted under a prefix or behind a proxy. Rejected requests show
their problem document (status, ``detail`` and every field in ``errors``) in the
response panel, as the server sent it.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, request, send_from_directory
from swagger_ui_bundle import swagger_ui_path

from ..errors import NotFound
from .problems import compact_json

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} - API docs</title>
<link rel="stylesheet" href="docs/swagger-ui.css">
<link rel="icon" type="image/png" href="docs/favicon-32x32.png">
<style>body {{ margin: 0; }}</style>
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({{
  url: "openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  tryItOutEnabled: true,
  displayRequestDuration: true,
  defaultModelsExpandDepth: 0,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
}});
</script>
</body>
</html>
"""

_ASSETS = {"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png", "favicon-16x16.png"}


def install_docs(app: Flask, openapi: dict[str, Any]) -> None:
    """Add /openapi.json, /docs and the Swagger UI assets under /docs/."""
    document = compact_json(openapi)
    page = _PAGE.format(title=openapi["info"]["title"])

    @app.get("/openapi.json")
    def openapi_json() -> Response:
        if request.script_root:  # mounted under a prefix: "Try it out" must call there too
            return Response(compact_json({**openapi, "servers": [{"url": request.script_root}]}),
                            mimetype="application/json")
        return Response(document, mimetype="application/json")

    @app.get("/docs")
    def docs() -> Response:
        return Response(page, mimetype="text/html")

    @app.get("/docs/<asset>")
    def docs_asset(asset: str) -> Response:
        if asset not in _ASSETS:
            raise NotFound(f"No documentation asset {asset!r}.")
        return send_from_directory(swagger_ui_path, asset, max_age=3600)
