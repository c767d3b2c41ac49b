"""InProcessEngine: the dispatch core and the models, in threads of the current process.

Serves ``corral serve --dev``, tests, and WSGI servers without Corral's own
process tree. It is the dispatcher of process mode over an in-memory transport:
the same :class:`~corral.dispatch.core.DispatchCore`, fed the same messages, under
one lock. A request thread hands the core a Submit and waits on its handle; each
replica is a thread that loads the model, says Hello, and computes the Work the
core sends to its inbox; a ticker thread calls :meth:`DispatchCore.tick` when a
batch falls due or a deadline passes. Inputs travel as the validated objects: there
is no process boundary to cross.

Under gevent (``threading`` monkey-patched) the threads are greenlets, and
``load()`` and ``predict()`` run on the hub's pool of real OS threads, so a
CPU-bound model never blocks the event loop.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from .. import metrics
from ..batching.queue import Batch, Lane
from ..dispatch.compute import compute, load_error, outcome_frames, split_groups, warm_up
from ..dispatch.core import DispatchCore, Kill, ModelConfig
from ..dispatch.devices import model_device
from ..engine import Engine, Handle, Input, ModelStatus, Outputs, outputs_of
from ..errors import ModelNotFound, RequestTimeout, error_from_dict, new_error_id
from ..green import gevent_patched
from ..log import REQUEST_IDS
from ..model import Model
from ..registry.spec import ModelKey, ModelSpec
from ..transport.protocol import Cancel, Done, Failure, Hello, Message, Result, Submit, Work

logger = logging.getLogger(__name__)

T = TypeVar("T")
_CLIENT = "local"  # the core's peer id for every request of this process


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


def model_config(spec: ModelSpec, replicas: int | None = None) -> ModelConfig:
    """What the dispatch core needs of a spec."""
    return ModelConfig(str(spec.key), spec.batching,
                       spec.replicas if replicas is None else replicas)


class _Pending(Handle):
    """The handle of one request: set once, by the core's Result or Failure."""

    def __init__(self, engine: InProcessEngine, key: ModelKey, rid: int) -> None:
        self._engine, self._key, self._rid = engine, key, rid
        # Held until the answer is in: a bare lock wakes the one waiter for less than an
        # Event (a Condition, a waiter list and a lock per wait).
        self._done = threading.Lock()
        self._done.acquire()
        self._msg: Message | None = None

    def complete(self, msg: Message) -> None:
        """Called once (the engine pops the request before completing it)."""
        if self._msg is not None:
            return
        self._msg = msg
        self._done.release()

    def refused(self) -> bool:
        return isinstance(self._msg, Failure)

    def result(self, timeout: float, client: socket.socket | None = None) -> Outputs:
        # Threads in this process cannot watch the client cheaply: ``client`` is unused.
        if self._msg is None and not self._done.acquire(timeout=max(0.0, timeout)):
            raise RequestTimeout(f"Model {self._key} gave no result in time.")
        if isinstance(self._msg, Failure):
            raise error_from_dict(self._msg.error)
        assert isinstance(self._msg, Result)
        self.batch = self._msg.batch
        return outputs_of(self._msg)

    def cancel(self) -> None:
        self._engine._cancel(self._rid)


class _ReplicaPeer:
    """A replica thread as the core sees it: its model, slot and inbox."""

    def __init__(self, spec: ModelSpec, index: int) -> None:
        self.spec, self.index = spec, index
        self.inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()


class InProcessEngine(Engine):
    """Every model version loaded in this process, dispatched by the shared core."""

    def __init__(self, specs: Iterable[ModelSpec], stall_grace: float = 30.0,
                 warm_up: bool = True, on_loaded: Callable[[], None] | None = None,
                 on_hung: Callable[[], None] | None = None, load_attempts: int = 1) -> None:
        """``on_loaded`` is called (in the replica's thread) after each replica loads;
        ``on_hung`` when a replica stays in predict() past its batch's deadlines and the
        stall grace (threads cannot be killed: by default it is only logged).
        ``load_attempts``: how many times a replica tries load() before it is failed."""
        self._load_attempts = load_attempts
        self._specs = {str(s.key): s for s in specs}
        self._on_loaded = on_loaded
        self._on_hung = on_hung
        self._stall_grace = stall_grace
        self._warm_up = warm_up
        self._pid: int | None = None
        self._lock = threading.Lock()

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        # A forked child inherits no threads: start again if the pid changed.
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._run = _os_thread_runner(sum(s.replicas for s in self._specs.values()))
            self._cond = threading.Condition()
            self._core = DispatchCore((model_config(s) for s in self._specs.values()),
                                      stall_grace=self._stall_grace, on_batch=self._on_batch)
            self._pending: dict[int, _Pending] = {}
            self._ids = itertools.count(1)
            self._running: dict[str, dict[int, _ReplicaPeer]] = {k: {} for k in self._specs}
            self._wake_at = float("inf")
            self._stopping = False
            threading.Thread(target=self._ticker, name="corral-ticker", daemon=True).start()
            with self._cond:
                for key in self._specs:
                    self._start_replicas(key)
            self._pid = os.getpid()

    def stop(self) -> None:
        if self._pid != os.getpid():
            return
        with self._cond:
            self._stopping = True
            self._core.stop()  # every replica thread is told to Stop
            self._flush()
            self._cond.notify_all()

    def _spec(self, key: ModelKey) -> ModelSpec:
        self.start()
        spec = self._specs.get(str(key))
        if spec is None:
            raise ModelNotFound(f"No model {key} in this engine.")
        return spec

    # -- requests ---------------------------------------------------------------------

    def submit(self, key: ModelKey, inputs: list[Input], deadline: float,
               lane: Lane = "live", request_id: str = "", size: float | None = None) -> Handle:
        self._spec(key)
        with self._cond:
            rid = next(self._ids)
            pending = self._pending[rid] = _Pending(self, key, rid)
            self._core.handle(_CLIENT, Submit(id=rid, model=str(key), deadline=deadline,
                                              lane=lane, request_id=request_id, size=size,
                                              inputs=[i.value for i in inputs]))
            self._flush()
        if pending.refused():
            pending.result(0)  # raises the refusal now
        return pending

    def _cancel(self, rid: int) -> None:
        with self._cond:
            if self._pending.pop(rid, None) is not None:
                self._core.handle(_CLIENT, Cancel(id=rid))
                self._flush()

    def status(self, key: ModelKey) -> ModelStatus:
        self._spec(key)
        with self._cond:
            return self._core.status(str(key))

    def set_replicas(self, key: ModelKey, replicas: int) -> None:
        spec = self._spec(key)
        with self._cond:
            self._core.configure(model_config(spec, replicas))
            self._start_replicas(str(key))
            self._flush()

    def load(self, key: ModelKey) -> None:
        spec = self._spec(key)
        with self._cond:
            current = self._core.models[str(key)].config.replicas
            self._core.configure(model_config(spec, current or spec.replicas), retry=True)
            self._start_replicas(str(key))
            self._flush()

    # -- the core's effects (called with the lock held) -------------------------------

    def _on_batch(self, key: str, batch: Batch, now: float) -> None:
        metrics.observe_batch(key, batch, now)
        name = key.rpartition(":")[0]
        metrics.labelled(metrics.QUEUE_DEPTH, name).set(self._core.depths_by_name()[name])

    def _flush(self) -> None:
        for effect in self._core.take_effects():
            if isinstance(effect, Kill):
                if self._on_hung is not None:
                    self._on_hung()
                else:
                    logger.error("a replica thread is hung in predict(); threads cannot be "
                                 "killed, so its requests have timed out and its slot stays "
                                 "busy")
            elif isinstance(effect.to, _ReplicaPeer):
                effect.to.inbox.put(effect.msg)
            else:
                pending = self._pending.pop(effect.msg.id, None)  # type: ignore[attr-defined]
                if pending is not None:
                    pending.complete(effect.msg)
        wait = self._core.next_wakeup()
        if wait is not None and time.monotonic() + wait < self._wake_at:
            self._cond.notify_all()  # the ticker sleeps too long: wake it to recompute

    def _ticker(self) -> None:
        with self._cond:
            while not self._stopping:
                self._core.tick()
                self._flush()
                wait = self._core.next_wakeup()
                self._wake_at = time.monotonic() + (1.0 if wait is None else wait)
                self._cond.wait(1.0 if wait is None else wait)

    def _start_replicas(self, key: str) -> None:
        spec = self._specs[key]
        running = self._running[key]
        model = self._core.models[key]
        for index in range(model.config.replicas):
            if index not in running and index not in model.failed:  # failed: only load() retries
                peer = running[index] = _ReplicaPeer(spec, index)
                threading.Thread(target=self._replica, args=(peer,), daemon=True,
                                 name=f"corral-{spec.key}-{index}").start()

    # -- replicas ---------------------------------------------------------------------

    def _replica(self, peer: _ReplicaPeer) -> None:
        model = self._load(peer)
        try:
            while model is not None:
                msg = peer.inbox.get()
                if not isinstance(msg, Work):
                    break
                done = self._compute(peer, model, msg)
                with self._cond:
                    self._core.handle(peer, done)
                    self._flush()
        finally:
            with self._cond:
                key = str(peer.spec.key)
                self._core.replica_gone(peer, "stopped")
                self._running[key].pop(peer.index, None)
                if not self._stopping and model is not None:
                    self._start_replicas(key)  # scaled up again while this one was leaving
                self._flush()

    def _load(self, peer: _ReplicaPeer) -> Model | None:
        spec, index = peer.spec, peer.index
        key = str(spec.key)
        attempt = 1
        while True:
            started = time.monotonic()
            try:
                model: Model = self._run(lambda: _load_instance(
                    spec, model_device(spec.device_for(index)), self._warm_up))
                break
            except BaseException as exc:  # whatever load() raises, this attempt has failed
                error_id = new_error_id()
                logger.error("model %s replica %d: load() raised %s (attempt %d of %d, error "
                             "id %s)", spec.key, index, type(exc).__name__, attempt,
                             self._load_attempts, error_id,
                             exc_info=(type(exc), exc, exc.__traceback__))
                if attempt < self._load_attempts and not self._stopping:
                    time.sleep(attempt)  # 1 s, 2 s...: a file or a service may come back
                    attempt += 1
                    continue
                with self._cond:
                    self._core.handle(peer, Hello(model=key, replica=index, pid=os.getpid(),
                                                  state="failed",
                                                  error=load_error(exc, error_id)))
                    self._flush()
                return None
        metrics.MODEL_LOAD.labels(spec.name).set(time.monotonic() - started)
        logger.info("model %s replica %d loaded in %.2fs", spec.key, index,
                    time.monotonic() - started)
        if self._on_loaded is not None:
            self._on_loaded()
        with self._cond:
            self._core.handle(peer, Hello(model=key, replica=index, pid=os.getpid(),
                                          state="ready"))
            self._flush()
        return model

    def _compute(self, peer: _ReplicaPeer, model: Model, work: Work) -> Done:
        spec = peer.spec
        started = time.perf_counter()
        token = REQUEST_IDS.set(",".join(i for i in work.request_ids if i))
        try:
            context = contextvars.copy_context()  # for an OS thread of gevent's pool too
            outcomes = compute(model, spec, split_groups(work),
                               lambda fn: self._run(lambda: context.run(fn)))
        finally:
            REQUEST_IDS.reset(token)
        metrics.labelled(metrics.PREDICT_DURATION, spec.name).observe(
            time.perf_counter() - started)
        meta, outputs = outcome_frames(outcomes)
        return Done(batch=work.batch, model=str(spec.key), replica=peer.index,
                    pid=os.getpid(), outcomes=meta, outputs=outputs)


def _load_instance(spec: ModelSpec, device: str, warm: bool) -> Model:
    # In-process replicas share one process: ``device`` is only advisory here, since
    # visibility variables cannot differ between threads.
    model = spec.cls()
    model.device = device
    model.load()
    if warm:
        warm_up(model, spec)
    return model
