"""InProcessEngine: models loaded and computed in threads of the current process.

Serves ``corral serve --dev``, tests, and WSGI servers without Corral's own
process tree. Each model version gets a :class:`BatchQueue` and ``replicas``
replica threads; a free replica takes the next batch when the queue's policy
says so (pull, so a batch only forms when someone can compute it).

Under gevent (``threading`` monkey-patched) replica loops are greenlets, and
``load()`` and ``predict()`` run on the hub's pool of real OS threads, so a
CPU-bound model never blocks the event loop.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from pydantic import BaseModel

from .. import metrics
from ..batching.queue import Batch, BatchQueue, Ticket
from ..engine import Engine, Handle, ModelStatus
from ..errors import (
    CorralError,
    ModelFailed,
    ModelLoading,
    ModelNotFound,
    Overloaded,
    RequestTimeout,
    new_error_id,
)
from ..model import Model
from ..registry.spec import ModelKey, ModelSpec
from .compute import compute
from .devices import model_device
from .green import gevent_patched

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _os_thread_runner(threads: int) -> Callable[[Callable[[], T]], T]:
    """How to run a blocking call: inline, or on a real thread when gevent patched threading."""
    if gevent_patched():
        from gevent import get_hub

        pool = get_hub().threadpool
        pool.maxsize = max(pool.maxsize, threads + 1)

        def run_on_pool(fn: Callable[[], T]) -> T:
            return pool.apply(fn)  # type: ignore[no-any-return]

        return run_on_pool

    def run_inline(fn: Callable[[], T]) -> T:
        return fn()

    return run_inline


class _Pending(Handle):
    """The handle of one ticket: collects slice results until every input has one."""

    def __init__(self, runner: _ModelRunner, n: int) -> None:
        self._runner = runner
        self._done = threading.Event()
        self._results: list[bytes] = [b""] * n
        self._filled = 0
        self._error: CorralError | None = None
        self.ticket: Ticket | None = None

    def result(self, timeout: float, client: socket.socket | None = None) -> list[bytes]:
        # Threads in this process cannot watch the client cheaply: ``client`` is unused.
        if not self._done.wait(max(0.0, timeout)):
            raise RequestTimeout(f"Model {self._runner.spec.key} gave no result in time.")
        if self._error is not None:
            raise self._error
        return self._results

    def cancel(self) -> None:
        if self.ticket is not None:
            self._runner.cancel(self.ticket)

    def fill(self, start: int, outputs: list[bytes]) -> None:
        """Store one slice's outputs; the handle completes when every input has one."""
        self._results[start : start + len(outputs)] = outputs
        self._filled += len(outputs)
        if self._filled == len(self._results):
            self._done.set()

    def fail(self, error: CorralError) -> None:
        if not self._done.is_set():
            self._error = error
            self._done.set()


class _ModelRunner:
    """One model version: its queue, its replicas and its state."""

    def __init__(self, spec: ModelSpec, run: Callable[[Callable[[], Any]], Any]) -> None:
        self.spec = spec
        self.queue = BatchQueue(spec.batching)
        self._run = run
        self._cond = threading.Condition()
        self._busy = 0
        self._ready = 0
        self._failed = 0
        self._error: str | None = None
        self._stopping = False

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        for i in range(self.spec.replicas):
            threading.Thread(
                target=self._replica, args=(i,), name=f"corral-{self.spec.key}-{i}", daemon=True
            ).start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            tickets = self.queue.drain()
            self._cond.notify_all()
        for t in tickets:
            t.context.fail(Overloaded(f"Model {self.spec.key} is shutting down; retry.",
                                      retry_after=1))

    def status(self) -> ModelStatus:
        with self._cond:
            if self._ready:
                return ModelStatus("ready", self._ready)
            if self._failed == self.spec.replicas:
                return ModelStatus("failed", 0, self._error)
            return ModelStatus("loading", 0)

    # -- requests ---------------------------------------------------------------------

    def submit(self, inputs: list[BaseModel], deadline: float) -> Handle:
        if self._stopping:
            raise Overloaded(f"Model {self.spec.key} is shutting down; retry.", retry_after=1)
        status = self.status()
        if status.state == "loading":
            raise ModelLoading(f"Model {self.spec.key} is still loading; retry shortly.", retry_after=2)
        if status.state == "failed":
            raise ModelFailed(f"Model {self.spec.key} failed to load: {status.error}")
        pending = _Pending(self, len(inputs))
        ticket = Ticket(inputs, deadline, context=pending)
        pending.ticket = ticket
        with self._cond:
            self.queue.put(ticket)
            self._cond.notify()
        return pending

    def cancel(self, ticket: Ticket) -> None:
        """Take a cancelled ticket out of the queue, so it is never computed."""
        with self._cond:
            self.queue.discard(ticket)

    # -- replicas ---------------------------------------------------------------------

    def _replica(self, index: int) -> None:
        model = self._load(index)
        if model is None:
            return
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._compute(model, batch)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def _load(self, index: int) -> Model | None:
        started = time.monotonic()
        try:
            model: Model = self._run(
                lambda: _load_instance(self.spec.cls, model_device(self.spec.device_for(index))))
        except BaseException as exc:  # whatever load() raises, the model is failed
            error_id = new_error_id()
            logger.error("model %s replica %d: load() raised %s (error id %s)",
                         self.spec.key, index, type(exc).__name__, error_id,
                         exc_info=(type(exc), exc, exc.__traceback__))
            with self._cond:
                self._failed += 1
                self._error = (f"load() raised {type(exc).__name__}; "
                               f"the server log has the details under error id {error_id}.")
            return None
        metrics.MODEL_LOAD.labels(self.spec.name).set(time.monotonic() - started)
        logger.info("model %s replica %d loaded in %.2fs", self.spec.key, index,
                    time.monotonic() - started)
        with self._cond:
            self._ready += 1
        return model

    def _next_batch(self) -> Batch | None:
        with self._cond:
            while not self._stopping:
                expired = self.queue.pop_expired()
                for t in expired:
                    t.context.fail(RequestTimeout(
                        f"Model {self.spec.key} did not start this request before its deadline."))
                if self.queue.ready(self._busy):
                    self._busy += 1
                    batch = self.queue.take()
                    metrics.observe_batch(self.spec.name, batch, self.queue.clock())
                    metrics.QUEUE_DEPTH.labels(self.spec.name).set(len(self.queue))
                    if len(self.queue):
                        self._cond.notify()  # more is waiting: another free replica may take it
                    return batch
                self._cond.wait(self.queue.next_wakeup(self._busy))
        return None

    def _compute(self, model: Model, batch: Batch) -> None:
        started = time.perf_counter()
        outcomes = compute(model, self.spec, [s.inputs for s in batch.slices], self._run)
        metrics.PREDICT_DURATION.labels(self.spec.name).observe(time.perf_counter() - started)
        # Under the lock: two replicas may deliver slices of one split ticket at once.
        with self._cond:
            for piece, outcome in zip(batch.slices, outcomes):
                pending: _Pending = piece.ticket.context
                if isinstance(outcome, CorralError):
                    self.queue.discard(piece.ticket)
                    pending.fail(outcome)
                else:
                    pending.fill(piece.start, outcome)


def _load_instance(cls: type[Model], device: str) -> Model:
    # In-process replicas share one process: ``device`` is only advisory here, since
    # visibility variables cannot differ between threads.
    model = cls()
    model.device = device
    model.load()
    return model


class InProcessEngine(Engine):
    """Every model version loaded in this process, computed on its own threads."""

    def __init__(self, specs: Iterable[ModelSpec]) -> None:
        self._specs = list(specs)
        self._runners: dict[ModelKey, _ModelRunner] = {}
        self._pid: int | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        # A forked child inherits no threads: start again if the pid changed.
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            run = _os_thread_runner(sum(s.replicas for s in self._specs))
            self._runners = {s.key: _ModelRunner(s, run) for s in self._specs}
            for runner in self._runners.values():
                runner.start()
            self._pid = os.getpid()

    def stop(self) -> None:
        for runner in self._runners.values():
            runner.stop()

    def _runner(self, key: ModelKey) -> _ModelRunner:
        self.start()
        runner = self._runners.get(key)
        if runner is None:
            raise ModelNotFound(f"No model {key} in this engine.")
        return runner

    def submit(self, key: ModelKey, inputs: list[BaseModel], deadline: float) -> Handle:
        return self._runner(key).submit(inputs, deadline)

    def status(self, key: ModelKey) -> ModelStatus:
        return self._runner(key).status()
