"""Inline placement: some models inside each HTTP worker, the rest behind the dispatcher.

A model declared with ``placement = "inline"`` is served under ``corral serve`` by an
:class:`~corral.inprocess.engine.InProcessEngine` in every HTTP worker, loaded after
the fork; the supervisor starts no replica process for it and the dispatcher never
hears of it. :class:`PlacedEngine` puts both engines behind the one Engine seam, so
the HTTP layer (validation, errors, metrics, jobs, the API) is the same for both.

Each worker holds its own copies, so an inline model's memory is multiplied by the
number of workers: :class:`MemoryWatch` logs a warning when a worker has grown by
more than ``CORRAL_INLINE_MEMORY_WARN_MB`` since its inline models started loading.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from .batching.queue import Lane
from .engine import Engine, Handle, Input, ModelStatus
from .errors import ModelInline
from .inprocess.engine import InProcessEngine
from .process.replica import MAX_LOAD_ATTEMPTS
from .registry.spec import ModelKey, ModelSpec

logger = logging.getLogger(__name__)

_MIB = 1 << 20
_WATCH_EVERY = 30.0  # seconds between looks at the worker's size, after the loads


def resident_bytes() -> int:
    """This process's resident set size (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class MemoryWatch:
    """Warns when this process has grown past a threshold since :meth:`start`.

    Warns again at each further multiple of the threshold, so a model that keeps
    growing (a cache, a leak) keeps being reported, once per step.
    """

    def __init__(self, models: list[str], threshold_mb: int) -> None:
        self.models = models
        self.step = threshold_mb * _MIB
        self._baseline = 0
        self._next = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        self._baseline = resident_bytes()
        self._next = self.step

    def check(self) -> None:
        if not self._baseline:
            return
        grown = resident_bytes() - self._baseline
        with self._lock:
            if grown < self._next:
                return
            self._next = (grown // self.step + 1) * self.step
        logger.warning(
            "HTTP worker %d has grown by %d MiB since its inline models (%s) began loading "
            "(more than CORRAL_INLINE_MEMORY_WARN_MB=%d); every HTTP worker holds its own "
            "copies, so serve large models with placement = \"process\"",
            os.getpid(), grown // _MIB, ", ".join(self.models), self.step // _MIB)


class PlacedEngine(Engine):
    """Routes each model version to the engine that runs it."""

    def __init__(self, remote: Engine, inline: list[ModelSpec], *, stall_grace: float,
                 warm_up: bool, memory_warn_mb: int) -> None:
        self.remote = remote
        self._keys = [spec.key for spec in inline]
        self.inline_keys = frozenset(str(key) for key in self._keys)
        self.watch = MemoryWatch(sorted(self.inline_keys), memory_warn_mb)
        self.inline = InProcessEngine(inline, stall_grace=stall_grace, warm_up=warm_up,
                                      on_loaded=self.watch.check, on_hung=self._hung,
                                      load_attempts=MAX_LOAD_ATTEMPTS)
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def _engine(self, key: ModelKey) -> Engine:
        return self.inline if str(key) in self.inline_keys else self.remote

    def start(self) -> None:
        self.remote.start()
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self.watch.start()  # before the loads: they are what it measures
                    self._stopped = threading.Event()
                    self._pid = os.getpid()
                    threading.Thread(target=self._watch, name="corral-inline-memory",
                                     daemon=True).start()
        self.inline.start()

    def _hung(self) -> None:
        """An inline predict() outlived its deadlines and the stall grace: a thread cannot
        be killed, so the worker stops (gracefully: its other requests finish, within the
        graceful timeout) and Gunicorn starts a new one with fresh copies."""
        logger.error("HTTP worker %d: an inline model is hung in predict() past its "
                     "requests' deadlines and CORRAL_STALL_GRACE; stopping this worker so "
                     "that Gunicorn replaces it", os.getpid())
        os.kill(os.getpid(), signal.SIGTERM)

    def wait_loaded(self, timeout: float) -> None:
        """Wait until every inline model is done loading (ready or failed), at most
        ``timeout`` seconds: a new HTTP worker takes requests once its models are in."""
        deadline = time.monotonic() + timeout
        while any(self.inline.status(k).state == "loading" for k in self._keys):
            if time.monotonic() >= deadline:
                logger.warning("HTTP worker %d takes requests while inline models are still "
                               "loading; they answer 503 until loaded", os.getpid())
                return
            time.sleep(0.01)

    def _watch(self) -> None:
        pid, stopped = os.getpid(), self._stopped
        while self._pid == pid and not stopped.wait(_WATCH_EVERY):
            self.watch.check()

    def stop(self) -> None:
        self._stopped.set()
        self.inline.stop()
        self.remote.stop()

    def submit(self, key: ModelKey, inputs: list[Input], deadline: float,
               lane: Lane = "live", request_id: str = "", size: float | None = None) -> Handle:
        return self._engine(key).submit(key, inputs, deadline, lane, request_id, size)

    def status(self, key: ModelKey) -> ModelStatus:
        return self._engine(key).status(key)

    def _managed(self, key: ModelKey) -> Engine:
        if str(key) in self.inline_keys:
            raise ModelInline(
                f"Model {key} runs inline, inside every HTTP worker: it is loaded with each "
                "worker and cannot be loaded, unloaded or scaled at run time. Declare it "
                "with placement = \"process\" to manage it through the admin API.")
        return self.remote

    def set_replicas(self, key: ModelKey, replicas: int) -> None:
        self._managed(key).set_replicas(key, replicas)

    def load(self, key: ModelKey) -> None:
        self._managed(key).load(key)

    def unload(self, key: ModelKey) -> None:
        self._managed(key).unload(key)
