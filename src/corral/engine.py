"""The seam between the HTTP layer and wherever models run.

The HTTP layer validates a request, then calls :meth:`Engine.submit` with the
validated inputs and an absolute deadline (``time.monotonic()`` seconds) and gets
a :class:`Handle`. It waits on :meth:`Handle.result` with a timeout and cancels
the handle if it gives up. Results come back as JSON documents (bytes), one per
input, encoded once where the model ran, so no process on the way decodes them.

Implementations: :class:`corral.workers.inprocess.InProcessEngine` (threads in the
HTTP worker's own process). Every failure is raised as a
:class:`corral.errors.CorralError`, so the HTTP layer never needs to know which
engine it talks to.
"""

from __future__ import annotations

import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from .registry.spec import ModelKey

State = Literal["loading", "ready", "failed"]


@dataclass(frozen=True)
class ModelStatus:
    """What an engine says of one model version."""

    state: State
    replicas_ready: int
    error: str | None = None


class Handle(ABC):
    """One submitted request."""

    @abstractmethod
    def result(self, timeout: float, client: socket.socket | None = None) -> list[bytes]:
        """Wait up to ``timeout`` seconds; return the outputs (JSON) or raise a CorralError.

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
    def submit(self, key: ModelKey, inputs: list[BaseModel], deadline: float) -> Handle:
        """Queue validated inputs; raise Overloaded, ModelLoading or ModelFailed at once if refused."""

    @abstractmethod
    def status(self, key: ModelKey) -> ModelStatus:
        """The current state of one model version."""
