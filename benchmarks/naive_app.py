"""The stack users run today: Flask under Gunicorn (gthread), the model in every worker.

    gunicorn --worker-class gthread --workers 2 --threads 4 --timeout 120 \
             --chdir benchmarks naive_app:app

Each worker imports this module, which loads the model at import (no --preload, so
every worker holds its own copy) and runs one forward pass per request, in the
request's thread. The same model code as corral_app.py: workloads.noop_predict, and
examples/embeddings.py's EmbeddingsModel (load() then predict([one input])).

BENCH_MODELS picks what is loaded and served (comma-separated: noop, embeddings).
Torch threads per worker: EMBEDDINGS_THREADS, read by EmbeddingsModel.load(); run.py
gives each worker cores // workers (at least 1), so the workers together use the
machine's cores once (2 workers on 2 cores: 1 thread each). Concurrent requests in
one worker's threads still run their forward passes concurrently, each on its own
OpenMP team, as they do in the usual Flask deployment.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, request
from pydantic import BaseModel, ValidationError
from workloads import NoopIn, noop_predict

app = Flask(__name__)
MODELS = [m.strip() for m in os.environ.get("BENCH_MODELS", "noop,embeddings").split(",")
          if m.strip()]


@app.get("/healthz")
def healthz() -> Response:
    # The pid lets run.py see that every worker has finished loading the model.
    return Response(f'{{"status":"ok","pid":{os.getpid()}}}', mimetype="application/json")


def _endpoint(name: str, in_type: type[BaseModel],
              predict: Callable[[list[Any]], list[BaseModel]]) -> None:
    def view() -> Response:
        try:
            item = in_type.model_validate_json(request.get_data())
        except ValidationError as exc:
            return Response(exc.json(include_url=False), status=422,
                            mimetype="application/json")
        out = predict([item])[0]  # one forward pass per request
        return Response(out.model_dump_json(), mimetype="application/json")

    app.add_url_rule(f"/v1/models/{name}/predict", name, view, methods=["POST"])


if "noop" in MODELS:
    _endpoint("noop", NoopIn, noop_predict)

if "embeddings" in MODELS:
    from examples.embeddings import EmbeddingsModel, Text

    _model = EmbeddingsModel()
    _model.load()  # at import, in every worker
    _endpoint("embeddings", Text, _model.predict)
