"""Job records and the JobStore interface every backend implements.

A job is one predict body (an input, or an array of inputs) run in the background.
Its record is the source of truth for the API: status, timestamps, progress, and
the result or error. Inputs are stored as the validated JSON documents, so whoever
runs the job (a process with no model code) sends them to a dispatcher as they are.

Life of a job::

    queued ──claim/start──▶ running ──finish──▶ succeeded | failed
       │                      │  ▲
       └──────cancel──────────┴──┼──▶ cancelled
                                 └── lease expired (its runner died): runnable again

A running job is *leased* by one runner (``owner``) until ``lease_until``; the runner
renews the lease while it works. A lease that runs out makes the job runnable again
(at-least-once execution). ``finish`` only succeeds while the job is unfinished, so
the first result wins and a late duplicate is dropped. Outputs are saved slice by
slice, so a job taken over after a crash resumes where its last runner stopped.
"""

from __future__ import annotations

import json
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


def new_job_id() -> str:
    """An unguessable id: 128 random bits, URL-safe."""
    return secrets.token_urlsafe(16)


def idempotency_scope(job: JobRecord) -> str | None:
    """An idempotency key is scoped to the model it was used with."""
    return None if job.idempotency_key is None else f"{job.model}\0{job.idempotency_key}"


def pack(documents: list[bytes]) -> str:
    """JSON documents (inputs or outputs) as one JSON array of their texts, for storing."""
    return json.dumps([d.decode() for d in documents], separators=(",", ":"))


def unpack(text: str | bytes) -> list[bytes]:
    return [d.encode() for d in json.loads(text)]


def looks_like_job_id(text: str) -> bool:
    """Whether ``text`` could be an id this server made (cheap check before a lookup)."""
    return 16 <= len(text) <= 64 and all(c.isalnum() or c in "-_" for c in text)


@dataclass
class JobRecord:
    """What the store keeps about one job (inputs and outputs apart)."""

    id: str
    model: str  # name
    version: str
    total: int  # inputs
    is_batch: bool  # the body was an array: the result is one too
    per_item_errors: bool  # the model returns a failed item's problem in place
    created_at: float
    status: Status = "queued"
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None  # set when it finishes
    done: int = 0  # inputs computed so far
    attempts: int = 0  # times a runner took it
    owner: str | None = None
    lease_until: float | None = None
    result: Any = None  # the predict answer's JSON value, once succeeded
    error: dict[str, Any] | None = None  # a problem document, once failed
    sent_at: float = 0.0  # last handed to a broker (Celery backend)
    resends: int = 0  # times a sweep sent it again
    idempotency_key: str | None = None
    fingerprint: str = ""  # of the body, to tell a retried submit from a different one

    @property
    def key(self) -> str:
        return f"{self.model}:{self.version}"

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def expired(self, now: float) -> bool:
        """Finished longer ago than its results are kept."""
        return self.expires_at is not None and self.expires_at <= now

    def runnable(self, now: float) -> bool:
        """Queued, or running under a lease that ran out."""
        return self.status == "queued" or (
            self.status == "running" and (self.lease_until or 0.0) <= now)

    def lost(self, now: float, redeliver_after: float) -> bool:
        """Whether a broker's message for it may be lost: its runner's lease ran out, or it
        has stayed queued since it was last sent for ``redeliver_after`` seconds, doubled
        for each time it was sent again (a long backlog is not flooded with copies)."""
        if self.status == "running":
            return (self.lease_until or 0.0) <= now
        wait = redeliver_after * 2 ** min(self.resends, 16)
        return self.status == "queued" and self.sent_at + wait <= now

    # -- transitions: each returns whether it applied, and stores save the record if so --

    def take(self, owner: str, lease: float, now: float,
             stale_owners: frozenset[str] = frozenset()) -> bool:
        """Lease to ``owner`` if runnable (or held by a known-dead owner): running."""
        if not (self.runnable(now) or (self.status == "running"
                                       and self.owner in stale_owners)):
            return False
        self.status = "running"
        self.started_at = self.started_at or now
        self.attempts += 1
        self.owner, self.lease_until = owner, now + lease
        return True

    def renew(self, owner: str, lease: float, now: float) -> bool:
        if self.status != "running" or self.owner != owner:
            return False
        self.lease_until = now + lease
        return True

    def give_back(self, owner: str) -> bool:
        """Queued again, this attempt not counted (its runner is stopping cleanly)."""
        if self.status != "running" or self.owner != owner:
            return False
        self.status, self.owner, self.lease_until = "queued", None, None
        self.attempts = max(0, self.attempts - 1)
        return True

    def resend(self, now: float, redeliver_after: float) -> bool:
        """Queued and sent now, if still :meth:`lost`."""
        if not self.lost(now, redeliver_after):
            return False
        if self.status == "queued":
            self.resends += 1
        self.status, self.owner, self.lease_until, self.sent_at = "queued", None, None, now
        return True

    def end(self, status: Status, result: Any, error: dict[str, Any] | None, now: float,
            keep: float) -> bool:
        """Finish (first result wins); the record expires ``keep`` seconds later."""
        if self.finished:
            return False
        self.status, self.result, self.error = status, result, error
        self.finished_at, self.expires_at = now, now + keep
        self.owner = self.lease_until = None
        if status == "succeeded":
            self.done = self.total
        return True

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> JobRecord:
        return cls(**json.loads(text))


class JobStore(ABC):
    """Where job records live. Every method is safe to call from any thread and process.

    Times are wall-clock seconds (``time.time()``): records outlive processes and cross
    machines.
    """

    @abstractmethod
    def create(self, job: JobRecord, inputs: list[bytes]) -> tuple[JobRecord, bool]:
        """Store a new queued job with its inputs. With an idempotency key already used for
        the same model, store nothing and return the existing job and False."""

    @abstractmethod
    def get(self, job_id: str) -> JobRecord | None:
        """The job, or None if there is no such job (never was, or expired)."""

    @abstractmethod
    def inputs(self, job_id: str) -> list[bytes]:
        """The job's input documents, in order."""

    @abstractmethod
    def update(self, job_id: str, change: Callable[[JobRecord], bool]) -> JobRecord | None:
        """Apply one of :class:`JobRecord`'s transitions in one transaction: the record is
        saved and returned if ``change`` applied (returned True), else None (also if the
        job is gone)."""

    def start(self, job_id: str, owner: str, lease: float, now: float,
              stale_owners: frozenset[str] = frozenset()) -> JobRecord | None:
        """Lease a runnable job to ``owner`` (queued → running, attempts + 1).

        Returns the record, or None if the job is finished, gone, or leased to another
        runner whose lease has not run out (unless that runner is in ``stale_owners``)."""
        return self.update(job_id, lambda job: job.take(owner, lease, now, stale_owners))

    def release(self, job_id: str, owner: str) -> bool:
        """Give a running job back (its runner is stopping, not crashing): queued again,
        this attempt not counted. False if it was not ``owner``'s."""
        return self.update(job_id, lambda job: job.give_back(owner)) is not None

    @abstractmethod
    def claim(self, owner: str, lease: float, limit: int, now: float, models: frozenset[str],
              stale_owners: frozenset[str] = frozenset()) -> list[JobRecord]:
        """Start up to ``limit`` runnable jobs of ``models`` (``name:version`` keys), oldest
        first, for ``owner``. Jobs leased to an owner in ``stale_owners`` (known dead)
        count as runnable at once."""

    def renew(self, job_id: str, owner: str, lease: float, now: float) -> bool:
        """Extend the lease; False if the job was cancelled, finished or taken over."""
        return self.update(job_id, lambda job: job.renew(owner, lease, now)) is not None

    @abstractmethod
    def save_outputs(self, job_id: str, start: int, outputs: list[bytes]) -> int | None:
        """Record the outputs of inputs ``start`` .. ``start + len(outputs)``; returns the
        number of inputs done so far, or None if the job has finished (was cancelled) or
        is gone, so its runner stops."""

    @abstractmethod
    def outputs(self, job_id: str) -> dict[int, list[bytes]]:
        """The saved slices of outputs, by the index of their first input."""

    @abstractmethod
    def finish(self, job_id: str, status: Status, result: Any, error: dict[str, Any] | None,
               now: float, keep: float) -> JobRecord | None:
        """Finish an unfinished job (succeeded, failed or cancelled); it expires ``keep``
        seconds later. Returns the record, or None if it had already finished (the first
        result wins) or is gone."""

    @abstractmethod
    def running_owners(self) -> set[str]:
        """Owners of the jobs running now."""

    @abstractmethod
    def lost(self, now: float, redeliver_after: float, limit: int) -> list[str]:
        """Ids of unfinished jobs whose broker message may be lost (:meth:`JobRecord.lost`)."""

    def requeue(self, job_id: str, now: float, redeliver_after: float) -> bool:
        """If the job is still lost, mark it queued and sent now; True if this caller should
        send it again (only one caller wins)."""
        return self.update(job_id, lambda job: job.resend(now, redeliver_after)) is not None

    @abstractmethod
    def purge(self, now: float) -> int:
        """Remove jobs whose results expired; returns how many."""

    def close(self) -> None:
        """Release connections."""


def now() -> float:
    return time.time()
