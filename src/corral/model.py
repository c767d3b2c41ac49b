"""The base class users subclass to serve a model.

Lifecycle of a :class:`Model` subclass:

* Its class is imported by every process of the server (HTTP workers import it
  for its input and output types), so the module that defines it should stay
  light: heavy imports belong in :meth:`Model.load`.
* One instance is created per *replica*; :meth:`Model.load` runs once in that
  replica, before any call to :meth:`Model.predict`. Under ``corral serve`` each
  replica is a process of its own and HTTP workers never call it; in-process mode
  (``--dev``, tests, other WSGI servers) runs replicas as threads of the server.
* :meth:`Model.predict` is called with a list of validated inputs and returns a
  list of outputs of the same length, in order. It is never called concurrently
  on one instance: a replica runs one batch at a time, so ``predict`` needs no
  locking of its own state.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable, Sequence
from typing import Any, ClassVar


@dataclass(frozen=True)
class Batching:
    """How requests to a model are grouped and admitted.

    ``max_size``: most inputs in one call to ``predict``.
    ``max_wait_ms``: longest a request waits for a batch to fill while a replica is
    busy elsewhere; when no replica is busy a batch goes at once.
    ``max_queue``: most inputs waiting; beyond it requests get 503 ``overloaded``.
    ``timeout``: seconds a request may wait for its result before a 504.
    ``size_ratio``: for models that declare :meth:`Model.input_size`, how far apart the
    sizes in one batch may be: the largest at most ``size_ratio`` times the smallest
    (the oldest request always goes; the others are picked nearest to its size first).
    """

    max_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 2048
    timeout: float = 30.0
    size_ratio: float = 2.0

    def __post_init__(self) -> None:
        if self.max_size < 1:
            raise ValueError(f"Batching.max_size must be at least 1, not {self.max_size}.")
        if self.max_wait_ms < 0:
            raise ValueError(f"Batching.max_wait_ms must be >= 0, not {self.max_wait_ms}.")
        if self.max_queue < 1:
            raise ValueError(f"Batching.max_queue must be at least 1, not {self.max_queue}.")
        if self.timeout <= 0:
            raise ValueError(f"Batching.timeout must be > 0, not {self.timeout}.")
        if not self.size_ratio >= 1:  # also refuses NaN
            raise ValueError(f"Batching.size_ratio must be >= 1, not {self.size_ratio}.")


# Used for models that declare no batching: one input per call, same admission rules.
NO_BATCHING = Batching(max_size=1, max_wait_ms=0.0)


class Model:
    """A model served by Corral. Subclass it and implement :meth:`predict`.

    Class attributes (all optional):

    ``name``: the URL name; default is the class name in kebab case without a
    trailing ``Model`` (``SentimentModel`` -> ``sentiment``).
    ``version``: a string; several classes may share a name with different versions.
    ``default``: mark one version as the one served at the unversioned path; without
    it the highest version is served there.
    ``batching``: a :class:`Batching`; absent means one input per call.
    ``replicas``: how many copies of the model serve requests.
    ``max_requests``: under ``corral serve``, a replica that has computed this many inputs
    is replaced by a fresh process once its batch is done (for models that leak); unset:
    never.
    ``per_item_errors``: what an array request gets when some of its inputs fail
    (``predict`` raised for them alone): ``False`` (default), the request fails with the
    first failed input's error, its index in ``loc`` and ``item``; ``True``, a 200 whose
    array holds each failed input's problem document in its place.
    ``placement``: where replicas run: ``"process"`` (default), each replica a process of
    its own that every HTTP worker sends requests to, batched across all of them; or
    ``"inline"``, for cheap models whose memory is small: under ``corral serve`` each HTTP
    worker loads its own ``replicas`` copies after the fork and computes in its own
    threads, with no hop to another process (same validation, errors, metrics and API;
    batches form within one worker; a crash in ``predict`` takes the worker down with it,
    and Gunicorn starts a new one). ``corral worker`` has no HTTP workers and runs every
    model in processes.
    ``devices``: where replicas run, e.g. ``["cuda:0", "cuda:1"]`` or ``["cpu"]``;
    replica *i* gets ``devices[i % len(devices)]``. Under ``corral serve`` that device is
    the only one the replica's process can see (``CUDA_VISIBLE_DEVICES`` and
    ``HIP_VISIBLE_DEVICES`` are set before it starts), and ``self.device`` says what to
    use in ``load()``: ``"cuda"`` (the one visible GPU) or ``"cpu"``.

    The input and output types are read from the annotations of ``predict``:
    ``def predict(self, batch: list[In]) -> list[Out]`` where ``In`` and ``Out`` are
    pydantic models.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    default: ClassVar[bool] = False
    batching: ClassVar[Batching | None] = None
    replicas: ClassVar[int] = 1
    per_item_errors: ClassVar[bool] = False
    max_requests: ClassVar[int | None] = None
    devices: ClassVar[Sequence[str] | None] = None
    placement: ClassVar[str] = "process"

    #: Set on each instance before load(): "cpu", or "cuda" when a GPU was assigned.
    device: str = "cpu"

    def load(self) -> None:
        """Load weights and warm up. Runs once per replica, before any predict."""

    #: Optional, for models whose cost grows with the input (padded sequences): a
    #: ``@staticmethod`` ``input_size(item) -> float`` giving one validated input's size,
    #: e.g. its number of words. It runs in the HTTP worker, without ``load()``, so it must
    #: be cheap and use only the input. Batches then group requests of similar size
    #: (``Batching.size_ratio``) instead of taking them in arrival order alone.
    input_size: ClassVar[Callable[[Any], float] | None] = None

    def predict(self, batch: list[Any]) -> list[Any]:
        """Compute one output per input, in order. Raise InvalidInput to reject an input."""
        raise NotImplementedError(f"{type(self).__name__} must implement predict(self, batch).")
