"""The embedded jobs backend: a loop that claims jobs from the SQLite store and runs them.

Under ``corral serve`` it is its own process (``corral: jobs``), a client of the
dispatcher like an HTTP worker, which never imports the app. A WSGI app serving
models in-process runs it as a thread instead. It wakes when an HTTP worker
submits a job (a datagram on ``jobs.wake`` in the runtime directory, or an event
in-process), or once a second to look for work anyway: leases that ran out, jobs
queued by another instance sharing the data directory, results to expire.

Several loops may share one data directory (two instances, or several workers of
a WSGI server): a job is leased to one at a time. A lease held by a process of this
host that is gone is taken over at once; one held elsewhere, when it runs out.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from .records import JobRecord, JobStore, now
from .runner import JobRunner, owner_dead

logger = logging.getLogger(__name__)

_IDLE_POLL = 1.0  # seconds between looks at the store when nobody wakes the loop
_PURGE_EVERY = 60.0
STOP_GRACE = 8.0  # seconds running jobs get to stop on shutdown (the supervisor waits 10)


class Wakeup:
    """How submitters wake the loop: a datagram socket, or (in-process) just an event."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self._event = threading.Event()
        self._sock: socket.socket | None = None
        if path is not None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.bind(path)

    def wait(self, timeout: float) -> None:
        if self._sock is None:
            self._event.wait(timeout)
            self._event.clear()
            return
        self._sock.settimeout(timeout)
        try:
            while True:
                self._sock.recv(64)
                self._sock.setblocking(False)  # drain what else came
        except (TimeoutError, BlockingIOError):
            pass

    def set(self) -> None:
        if self.path is not None:
            wake(self.path)
        else:
            self._event.set()



def wake(path: str) -> None:
    """Tell the loop listening on ``path`` that there is work (best effort, never blocks)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(b"j", path)
    except OSError:
        pass  # not running, or already woken: it polls anyway


class EmbeddedLoop:
    """Claims runnable jobs and runs up to ``concurrency`` of them at once."""

    def __init__(self, store: JobStore, runner: JobRunner, concurrency: int,
                 wakeup: Wakeup, models: frozenset[str]) -> None:
        """``models``: the ``name:version`` keys this server runs; jobs of other models in
        a shared data directory are left to the servers that have them."""
        self.store, self.runner, self.wakeup = store, runner, wakeup
        self.models = models
        self.concurrency = concurrency
        self._running = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._stopped = threading.Event()
        self._next_purge = 0.0

    def run(self) -> None:
        """Loop until :meth:`stop`."""
        while not self._stopped.is_set():
            try:
                self._step()
            except Exception:  # the store is busy or failing: keep going
                logger.exception("jobs loop: could not claim work; retrying")
                self._stopped.wait(_IDLE_POLL)
            self.wakeup.wait(_IDLE_POLL)
        # Jobs stop after their slices in flight and are given back (not a crash).
        self.runner.heartbeat.stop()
        deadline = time.monotonic() + STOP_GRACE
        with self._idle:
            while self._running and time.monotonic() < deadline:
                self._idle.wait(0.1)

    def stop(self) -> None:
        self._stopped.set()
        self.wakeup.set()

    def _step(self) -> None:
        t = now()
        if t >= self._next_purge:
            purged = self.store.purge(t)
            if purged:
                logger.info("removed %d expired jobs", purged)
            self._next_purge = t + _PURGE_EVERY
        with self._lock:
            free = self.concurrency - self._running
        if free <= 0:
            return
        stale = frozenset(o for o in self.store.running_owners()
                          if o != self.runner.owner and owner_dead(o))
        for job in self.store.claim(self.runner.owner, self.runner.settings.lease, free, t,
                                    self.models, stale):
            if job.attempts > 1:
                logger.info("job %s: taking it over (attempt %d)", job.id, job.attempts)
            with self._lock:
                self._running += 1
            # A daemon thread per job (at most ``concurrency``): a process that exits is
            # never held up by a job waiting on its engine.
            threading.Thread(target=self._run, args=(job,), name="corral-job",
                             daemon=True).start()

    def _run(self, job: JobRecord) -> None:
        started = time.monotonic()
        try:
            finished = self.runner.run(job)
            if finished is not None:
                logger.info("job %s %s in %.2f s (%d inputs)", job.id, finished.status,
                            time.monotonic() - started, job.total)
        finally:
            with self._lock:
                self._running -= 1
                self._idle.notify_all()
            if not self._stopped.is_set():
                self.wakeup.set()  # a slot is free: look for more work now
