"""CORS: which browser origins may call the API (off unless ``CORRAL_CORS_ORIGINS`` is set).

A request from an allowed origin gets ``Access-Control-Allow-Origin`` (that origin, or
``*``), and a preflight (``OPTIONS`` with ``Access-Control-Request-Method``) gets the
methods the path allows and the request headers Corral reads. No credentials: the admin
token is a header a page would have to hold, not a cookie.
"""

from __future__ import annotations

from flask import Flask, Response, request

# The request headers a browser may send along (besides the CORS-safelisted ones).
ALLOWED_HEADERS = "Content-Type, Content-Encoding, X-Request-Timeout, X-Request-ID, Authorization"
EXPOSED_HEADERS = "Retry-After, X-Request-ID"
MAX_AGE = "600"


def install_cors(app: Flask, origins: list[str]) -> None:
    """Answer CORS for ``origins`` (``*`` allows any) on every response of ``app``."""
    any_origin = "*" in origins
    allowed = set(origins)

    @app.after_request
    def add_cors_headers(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if origin is None or not (any_origin or origin in allowed):
            return response
        response.headers["Access-Control-Allow-Origin"] = "*" if any_origin else origin
        if not any_origin:
            response.headers.add("Vary", "Origin")
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            response.headers["Access-Control-Allow-Methods"] = response.headers.get(
                "Allow", "GET, POST, PUT")
            response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
            response.headers["Access-Control-Max-Age"] = MAX_AGE
        return response
