"""JobService: what the HTTP layer uses, whichever backend runs the jobs.

It stores a new job, hands it to whoever runs it (the embedded loop, or Celery), and
lets a request wait for a job to finish. Waiting does not poll per request: one
watcher thread per process looks up every job that someone waits on, ten times a
second, and wakes their events; a waiting request blocks on its event.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from .records import JobRecord, JobStore

logger = logging.getLogger(__name__)

_WATCH_INTERVAL = 0.1


class JobWatch:
    """Wakes requests waiting on jobs when those jobs finish."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._waiting: dict[str, list[threading.Event]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pid: int | None = None

    def wait(self, job_id: str, timeout: float) -> None:
        """Return when the job has finished (or vanished), or after ``timeout`` seconds."""
        event = threading.Event()
        with self._lock:
            self._waiting.setdefault(job_id, []).append(event)
            if self._pid != os.getpid():  # first waiter in this process (or since a fork)
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="corral-job-watch", daemon=True).start()
        self._wake.set()
        try:
            event.wait(timeout)
        finally:
            with self._lock:
                events = self._waiting.get(job_id, [])
                if event in events:
                    events.remove(event)
                if not events:
                    self._waiting.pop(job_id, None)

    def _run(self) -> None:
        while True:
            with self._lock:
                ids = list(self._waiting)
            if not ids:
                self._wake.wait(5.0)
                self._wake.clear()
                continue
            for job_id in ids:
                try:
                    job = self.store.get(job_id)
                except Exception:
                    logger.warning("could not read job %s while waiting on it", job_id,
                                   exc_info=True)
                    continue
                if job is None or job.finished:
                    with self._lock:
                        for event in self._waiting.get(job_id, []):
                            event.set()
            self._wake.wait(_WATCH_INTERVAL)
            self._wake.clear()


class JobService:
    """Submit, read, cancel and wait on jobs."""

    def __init__(self, store: JobStore, send: Callable[[JobRecord], None],
                 start_runner: Callable[[], Callable[[], None]] | None = None,
                 eager: bool = False) -> None:
        """``send`` hands a new job to its runner; ``start_runner`` starts a runner in this
        process (in-process mode, or inline models), once per process, and returns what
        stops it. ``eager``: start it with the process, not when jobs appear (an HTTP
        worker of a tree, for its inline models: it must take over jobs of a worker that
        died, which nobody submits again)."""
        self.store = store
        self._send = send
        self._start_runner = start_runner
        self._eager = eager
        self._stop_runner: Callable[[], None] | None = None
        self._started_pid: int | None = None
        self._checked_pid: int | None = None
        self._lock = threading.Lock()
        self.watch = JobWatch(store)

    def start(self) -> None:
        """Called when this process starts serving (again after a fork): start its own
        runner, if it has one, when jobs are waiting. Otherwise the first submit starts it,
        so a server that never sees a job runs no jobs thread."""
        if self._start_runner is None or self._checked_pid == os.getpid():
            return
        self._checked_pid = os.getpid()
        if self._eager:
            self._ensure_runner()
            return
        try:
            waiting = bool(self.store.lost(time.time(), 0.0, limit=1))  # queued, or left
        except Exception:  # the store is unreachable: serve anyway; the next submit starts it
            logger.warning("could not look for waiting jobs", exc_info=True)
            return
        if waiting:
            self._ensure_runner()

    def _ensure_runner(self) -> None:
        if self._start_runner is None or self._started_pid == os.getpid():
            return
        with self._lock:
            if self._started_pid != os.getpid():
                self._started_pid = os.getpid()
                self._stop_runner = self._start_runner()

    def stop(self) -> None:
        """Stop this process's runner, if it runs one: running jobs finish their slices in
        flight and are given back for another runner (not counted as a crash)."""
        if self._stop_runner is not None and self._started_pid == os.getpid():
            self._stop_runner()
            self._stop_runner = None

    def submit(self, job: JobRecord, inputs: list[bytes]) -> tuple[JobRecord, bool]:
        """Store the job (durably) and send it; with a known idempotency key, the job
        already made and False."""
        job, created = self.store.create(job, inputs)
        if created:
            self._ensure_runner()
            try:
                self._send(job)
            except Exception:
                # The record is stored: the job is accepted and a sweep sends it again.
                logger.warning("job %s: could not hand it to the job queue now; it is kept "
                               "and sent again later", job.id, exc_info=True)
        return job, created
