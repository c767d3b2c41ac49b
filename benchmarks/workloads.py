"""What both stacks serve: the no-op model's types and code, and the request body.

Shared by naive_app.py (Flask under Gunicorn) and corral_app.py (corral serve), so
the two stacks run exactly the same model code; the MiniLM model is
examples/embeddings.py's EmbeddingsModel in both. Nothing heavy is imported here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so that `examples.embeddings` imports from a checkout
    sys.path.insert(0, str(ROOT))

# The one body every request of every run sends (benchmarks/body.json holds the same).
TEXT = "Corral serves machine-learning models over HTTP, with dynamic batching across workers."


class NoopIn(BaseModel):
    """The no-op model's input: one short text, validated like the MiniLM model's."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=10_000)


class NoopOut(BaseModel):
    length: int


def noop_predict(batch: list[NoopIn]) -> list[NoopOut]:
    """Trivial work: the serving stack is all that is measured."""
    return [NoopOut(length=len(item.text)) for item in batch]


class BatchLog:
    """Appends each realised batch size, one line per predict call, to a file.

    The file is ``$BENCH_BATCH_DIR/<model>.batches``; run.py reads what was appended
    during each wrk run. One O_APPEND write of a few bytes per batch (~2 us).
    Without BENCH_BATCH_DIR nothing is written.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self.fd: int | None = None
        self.disabled = False

    def record(self, size: int) -> None:
        if self.disabled:
            return
        if self.fd is None:
            folder = os.environ.get("BENCH_BATCH_DIR")
            if not folder:
                self.disabled = True
                return
            self.fd = os.open(os.path.join(folder, f"{self.model}.batches"),
                              os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(self.fd, b"%d\n" % size)
