"""The mixed-length benchmark's app: MiniLM twice, with and without length-aware batching.

* ``sized``: examples/embeddings.py's EmbeddingsModel as it is (it declares
  ``input_size``, so batches group texts of similar length);
* ``fifo``: the same model with ``input_size = None``: batches in arrival order.

Both batch with max_size 32, max_wait_ms 5, one replica of EMBEDDINGS_THREADS torch
threads each. Only the model under test gets traffic at any time.
"""

from __future__ import annotations

import corral
from examples.embeddings import EmbeddingsModel


class SizedModel(EmbeddingsModel):
    name = "sized"


class FifoModel(EmbeddingsModel):
    name = "fifo"
    input_size = None


app = corral.Server([SizedModel, FifoModel], title="Corral mixed-length benchmark")
