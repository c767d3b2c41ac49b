"""JobRunner: computes one leased job through an engine, slice by slice.

The inputs go to the model's dispatcher in slices of the model's ``max_size`` on
the ``background`` lane: below live requests, not counted against ``max_queue``,
in capacity live traffic leaves idle, aged so they never starve (the lane's rules
are in :mod:`corral.batching.queue`). Two slices are in flight at once, so a replica
never idles between them. Each
slice's outputs are saved as they come, so a job taken over after a crash resumes
where it stopped; progress is the count of saved outputs.

Errors, as in a predict request: an input the model rejects or fails on fails the
job (naming the item), unless the model returns per-item errors. A refusal that
will pass (the replica crashed, the model is loading or saturated) is retried,
a bounded number of times for a crash (the input may be the cause).

A :class:`Heartbeat` thread renews the leases of the jobs a process runs; when a
renewal fails (the job was cancelled, or another runner took it over after this one
stalled) the job stops after the slices in flight. A runner that is told to stop
(the server shuts down) gives its jobs back, so a deploy does not count as a crash.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import metrics
from ..schema.problems import output_documents, problem_document
from ..engine import Engine, Handle, Input
from ..errors import (
    CorralError,
    ModelFailed,
    ModelLoading,
    ModelUnloaded,
    Overloaded,
    RequestTimeout,
    WorkerCrashed,
)
from ..registry.spec import ModelKey
from .records import JobRecord, JobStore, now

logger = logging.getLogger(__name__)

IN_FLIGHT = 2  # slices of one job queued or computing at once
_TRANSIENT = (Overloaded, ModelLoading, RequestTimeout, WorkerCrashed)


def runner_id() -> str:
    """This process, as a lease owner: host, pid and the pid's start time (so a reused
    pid is not mistaken for the owner)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def _start_ticks(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def owner_dead(owner: str) -> bool:
    """Whether a lease owner is a process of this host that no longer runs."""
    host, _, rest = owner.partition(":")
    pid_text, _, ticks = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    return _start_ticks(int(pid_text)) != ticks


@dataclass
class RunnerSettings:
    """What a runner needs to know, from Settings and the models' batching."""

    lease: float  # seconds a runner holds a job without renewing
    keep: float  # seconds a finished job's result is kept
    max_attempts: int  # times a job (or one slice after a crash) is tried
    timeout: float  # seconds a job may run before it fails with a timeout
    slice_size: Callable[[ModelKey], int]  # the model's max_size
    decode: Callable[[ModelKey, bytes], Input]  # an input document as the engine takes it


@dataclass(eq=False)
class _Active:
    job: JobRecord
    stop: threading.Event = field(default_factory=threading.Event)


class Heartbeat:
    """Renews the leases of the jobs this process runs, every third of the lease."""

    def __init__(self, store: JobStore, owner: str, lease: float) -> None:
        self.store, self.owner, self.lease = store, owner, lease
        self._active: dict[str, _Active] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.stopping = False  # the process is shutting down: jobs stop and are given back

    def add(self, job: JobRecord) -> threading.Event:
        """Watch a job; the event is set when it should stop."""
        active = _Active(job)
        with self._lock:
            self._active[job.id] = active
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="corral-job-leases",
                                                daemon=True)
                self._thread.start()
        return active.stop

    def remove(self, job_id: str) -> None:
        with self._lock:
            self._active.pop(job_id, None)

    def stop(self) -> None:
        """Stop renewing, and tell every job to stop after its slices in flight."""
        self.stopping = True
        self._stopped.set()
        with self._lock:
            for active in self._active.values():
                active.stop.set()

    def _run(self) -> None:
        while not self._stopped.wait(self.lease / 3):
            with self._lock:
                active = list(self._active.values())
            for a in active:
                try:
                    if not self.store.renew(a.job.id, self.owner, self.lease, now()):
                        logger.info("job %s was cancelled or taken over; stopping it", a.job.id)
                        a.stop.set()
                except Exception:  # the store is unreachable: retry at the next beat
                    logger.warning("could not renew the lease of job %s", a.job.id,
                                   exc_info=True)


def job_timeout(job_id: str, seconds: float) -> RequestTimeout:
    """Why a job that ran out of time failed."""
    return RequestTimeout(f"Job {job_id} did not finish within its {seconds:g} s.")


class JobRunner:
    """Runs leased jobs through an engine and records the outcome."""

    def __init__(self, store: JobStore, engine: Engine, settings: RunnerSettings,
                 owner: str, time_limits: tuple[type[BaseException], ...] = ()) -> None:
        """``time_limits``: exceptions that stop a job from outside because it ran out of
        time (Celery's soft time limit); the job fails with a timeout, as when it runs
        past its own."""
        self.store, self.engine, self.settings, self.owner = store, engine, settings, owner
        self.time_limits = time_limits
        self.heartbeat = Heartbeat(store, owner, settings.lease)

    def run(self, job: JobRecord) -> JobRecord | None:
        """Compute a job leased to this runner; returns its finished record, or None if it
        stopped unfinished (cancelled, taken over) or another result came first."""
        s = self.settings
        if job.attempts > s.max_attempts:
            return self._fail(job, WorkerCrashed(
                f"Job {job.id} was started {job.attempts - 1} times and its runner died each "
                "time; it is not tried again."))
        stop = self.heartbeat.add(job)
        finished: JobRecord | None = None
        try:
            finished = self._run(job, stop)
            return finished
        except CorralError as exc:
            finished = self._fail(job, exc)
            return finished
        except self.time_limits:
            finished = self._fail(job, job_timeout(job.id, s.timeout))
            return finished
        except Exception as exc:  # a bug, or the store failed: the lease runs out, retried
            logger.error("job %s: runner failed; it runs again when its lease expires",
                         job.id, exc_info=exc)
            return None
        finally:
            self.heartbeat.remove(job.id)
            if finished is None and self.heartbeat.stopping:
                try:
                    if self.store.release(job.id, self.owner):
                        logger.info("job %s: given back for the next start", job.id)
                except Exception:  # the lease runs out instead
                    logger.warning("could not give job %s back", job.id, exc_info=True)

    def _run(self, job: JobRecord, stop: threading.Event) -> JobRecord | None:
        s = self.settings
        key = ModelKey(job.model, job.version)
        documents = self.store.inputs(job.id)
        # Each input's output document once computed: from earlier runners, then ours.
        slots: list[bytes | None] = [None] * job.total
        for first, outs in self.store.outputs(job.id).items():
            slots[first:first + len(outs)] = outs
        size = max(1, s.slice_size(key))
        pending: deque[tuple[int, int]] = deque()  # (first, count) of inputs still to compute
        i = 0
        while i < job.total:
            if slots[i] is not None:
                i += 1
                continue
            j = i
            while j < job.total and slots[j] is None and j - i < size:
                j += 1
            pending.append((i, j - i))
            i = j
        deadline = time.monotonic() + s.timeout
        crashes: dict[int, int] = {}
        in_flight: deque[tuple[int, int, Handle]] = deque()
        while pending or in_flight:
            if stop.is_set():
                for _, _, handle in in_flight:
                    handle.cancel()
                return None
            while pending and len(in_flight) < IN_FLIGHT:
                first, count = pending[0]
                try:
                    inputs = [s.decode(key, d) for d in documents[first:first + count]]
                    handle = self.engine.submit(key, inputs, deadline, lane="background",
                                                request_id=f"job-{job.id}")
                except (Overloaded, ModelLoading) as exc:
                    if not in_flight:
                        stop.wait(min(exc.retry_after, 5))
                    break
                pending.popleft()
                in_flight.append((first, count, handle))
            if not in_flight:
                if time.monotonic() >= deadline:
                    raise job_timeout(job.id, s.timeout)
                continue
            first, count, handle = in_flight.popleft()
            try:
                outputs = handle.result(max(0.0, deadline - time.monotonic()))
            except _TRANSIENT as exc:
                if time.monotonic() >= deadline:
                    raise job_timeout(job.id, s.timeout) from None
                if isinstance(exc, WorkerCrashed):
                    crashes[first] = crashes.get(first, 0) + 1
                    if crashes[first] >= s.max_attempts:
                        raise
                logger.info("job %s: inputs %d..%d: %s; trying again", job.id, first,
                            first + count - 1, exc.type)
                pending.appendleft((first, count))
                continue
            computed = output_documents(outputs, job.is_batch, job.per_item_errors, first)
            if self.store.save_outputs(job.id, first, computed) is None:
                stop.set()  # cancelled (or gone): the next turn cancels what is in flight
                continue
            slots[first:first + count] = computed
        values: list[Any] = json.loads(b"[" + b",".join(d for d in slots if d) + b"]")
        result = values if job.is_batch else values[0]
        return self._counted(self.store.finish(job.id, "succeeded", result, None, now(),
                                               self.settings.keep))

    def _fail(self, job: JobRecord, error: CorralError) -> JobRecord | None:
        if isinstance(error, (ModelFailed, ModelUnloaded)):
            logger.warning("job %s failed: %s", job.id, error.detail)
        return self._counted(self.store.finish(job.id, "failed", None, problem_document(error),
                                               now(), self.settings.keep))

    @staticmethod
    def _counted(job: JobRecord | None) -> JobRecord | None:
        if job is not None:
            metrics.JOBS.labels(job.model, job.status).inc()
        return job
