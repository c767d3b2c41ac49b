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


class Cors:
    """The CORS headers of a response, for the allowed ``origins`` (``*`` allows any)."""

    def __init__(self, origins: list[str]) -> None:
        self.any_origin = "*" in origins
        self.allowed = set(origins)

    def headers(self, origin: str | None, preflight: str | None) -> list[tuple[str, str]]:
        """Headers for a request from ``origin``; ``preflight`` is the ``Allow`` of a
        preflight request's path (None for any other request)."""
        if origin is None or not (self.any_origin or origin in self.allowed):
            return []
        out = [("Access-Control-Allow-Origin", "*" if self.any_origin else origin)]
        if not self.any_origin:
            out.append(("Vary", "Origin"))
        out.append(("Access-Control-Expose-Headers", EXPOSED_HEADERS))
        if preflight is not None:
            out += [("Access-Control-Allow-Methods", preflight),
                    ("Access-Control-Allow-Headers", ALLOWED_HEADERS),
                    ("Access-Control-Max-Age", MAX_AGE)]
        return out


def install_cors(app: Flask, cors: Cors) -> None:
    """Answer CORS on every response of ``app`` that Flask makes."""

    @app.after_request
    def add_cors_headers(response: Response) -> Response:
        preflight = None
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            preflight = response.headers.get("Allow", "GET, POST, PUT")
        for name, value in cors.headers(request.headers.get("Origin"), preflight):
            if name == "Vary":
                response.headers.add(name, value)
            else:
                response.headers[name] = value
        return response
