"""The Corral side of the benchmark: ``corral serve benchmarks/corral_app.py``.

Two models, picked with BENCH_MODELS (comma-separated, default both):

* ``noop``: NoopIn -> NoopOut (workloads.py), batching max_size=32, max_wait_ms=5;
* ``embeddings``: examples/embeddings.py's EmbeddingsModel (MiniLM, max_size=32,
  max_wait_ms=5, EMBEDDINGS_THREADS torch threads per replica), unchanged except that
  predict() records each batch's size.

Each predict call appends its batch size to $BENCH_BATCH_DIR/<model>.batches (see
workloads.BatchLog), which is how run.py reports realised batch sizes. Replicas
per model come from CORRAL_MODELS__<NAME>__REPLICAS, as for any Corral app.
"""

from __future__ import annotations

import os

from workloads import BatchLog, NoopIn, NoopOut, noop_predict

import corral
from examples.embeddings import Embedding, EmbeddingsModel, Text


class NoopModel(corral.Model):
    """Returns the length of the text: measures the serving stack alone."""

    name = "noop"
    version = "1"
    batching = corral.Batching(max_size=32, max_wait_ms=5)

    def load(self) -> None:
        self.log = BatchLog("noop")

    def predict(self, batch: list[NoopIn]) -> list[NoopOut]:
        self.log.record(len(batch))
        return noop_predict(batch)


class BenchEmbeddingsModel(EmbeddingsModel):
    """examples/embeddings.py's model, recording batch sizes."""

    def load(self) -> None:
        self.log = BatchLog("embeddings")
        super().load()

    def predict(self, batch: list[Text]) -> list[Embedding]:
        self.log.record(len(batch))
        return super().predict(batch)


_ALL = {"noop": NoopModel, "embeddings": BenchEmbeddingsModel}
_WANTED = [m.strip() for m in os.environ.get("BENCH_MODELS", "noop,embeddings").split(",")
           if m.strip()]

app = corral.Server([_ALL[m] for m in _WANTED], title="Corral benchmark")
