"""The seam between the HTTP layer and wherever models run.

The HTTP layer validates a request, then calls :meth:`Engine.submit` with the
validated inputs and an absolute deadline (``time.monotonic()`` seconds) and gets
a :class:`Handle`. It waits on :meth:`Handle.result` with a timeout and cancels
the handle if it gives up. Results come back as JSON documents (bytes), one per
input, encoded once where the model ran, so no process on the way decodes them.

Both engines put the same :class:`~corral.dispatch.core.DispatchCore` behind this
interface: :class:`corral.inprocess.engine.InProcessEngine` runs it and the models
in threads of the current process; :class:`corral.process.client.DispatcherEngine`
talks to the dispatcher process of ``corral serve``. Every failure is raised as a
:class:`corral.errors.CorralError`, so the HTTP layer never needs to know which
engine it talks to.
"""

from __future__ import annotations

import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass

from pydantic import BaseModel

from .batching.queue import Lane
from .dispatch.status import ModelStatus as ModelStatus
from .dispatch.status import State as State
from .errors import CorralError, error_from_dict
from .registry.spec import ModelKey
from .transport.protocol import Result


@dataclass(frozen=True)
class Input:
    """One validated input: the object, and the exact JSON document it was validated from.

    A replica in another process validates the same document with the same rules,
    so both modes see the same value; nothing is re-serialised on the way.
    """

    value: BaseModel
    json: bytes


Outputs = list[bytes | CorralError]


def outputs_of(result: Result) -> Outputs:
    """A Result's outputs, with the error of each input that failed alone in its place."""
    outputs: Outputs = list(result.outputs)
    for error in result.errors:
        item = error.get("item")
        if type(item) is int and 0 <= item < len(outputs):
            outputs[item] = error_from_dict(error)
    return outputs


class Handle(ABC):
    """One submitted request."""

    #: Once the result is in: the size of the largest batch that computed part of it.
    batch: int = 0

    @abstractmethod
    def result(self, timeout: float, client: socket.socket | None = None) -> Outputs:
        """Wait up to ``timeout`` seconds; return one output (JSON) per input, or the
        CorralError of an input that failed alone; or raise a CorralError for the request.

        Raises RequestTimeout if no result came in time, and ClientClosedRequest if
        ``client`` (the HTTP connection, where the server exposes it) closes first and
        the engine can watch it; the caller should then cancel.
        """

    @abstractmethod
    def cancel(self) -> None:
        """Give up on the request: if it is still queued it will never be computed."""


class Engine(ABC):
    """Loads models and computes requests for the HTTP layer."""

    @abstractmethod
    def start(self) -> None:
        """Begin loading every model; returns at once. Safe to call again."""

    @abstractmethod
    def stop(self) -> None:
        """Fail what is queued and release the models."""

    @abstractmethod
    def submit(self, key: ModelKey, inputs: list[Input], deadline: float,
               lane: Lane = "live", request_id: str = "", size: float | None = None) -> Handle:
        """Queue validated inputs; raise Overloaded, ModelLoading, ModelFailed or
        ModelUnloaded at once if refused. ``background`` work (jobs) ranks below live;
        ``request_id`` tags the log lines of the batches that compute it; ``size`` is
        the largest ``input_size()`` of the inputs, for models that declare one."""

    @abstractmethod
    def status(self, key: ModelKey) -> ModelStatus:
        """The current state of one model version, without waiting on another process."""

    @abstractmethod
    def set_replicas(self, key: ModelKey, replicas: int) -> None:
        """Run ``replicas`` copies of a declared model (0 unloads it); returns at once."""

    @abstractmethod
    def load(self, key: ModelKey) -> None:
        """Load a model that is unloaded or failed, with its declared replica count."""

    def unload(self, key: ModelKey) -> None:
        """Stop every replica of a model and free its memory; its requests get 503."""
        self.set_replicas(key, 0)
