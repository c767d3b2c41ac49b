"""SQLiteJobStore: job records in one SQLite file, the embedded default.

The file (``jobs.sqlite3`` in ``CORRAL_DATA_DIR``) is opened in WAL mode with
``synchronous=FULL``: a job is committed to disk before its 202 is sent, so neither
a kill -9 nor a power cut loses it. Every change runs in a ``BEGIN IMMEDIATE``
transaction, so several processes (HTTP workers, the jobs runner, a second
instance sharing the directory) can use one file safely. Each process opens one
connection, on first use (a server that never sees a job never creates the file),
and its threads (or greenlets) take turns on it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .records import FINISHED, JobRecord, JobStore, Status, idempotency_scope, pack, unpack

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    lease_until REAL,
    owner TEXT,
    expires_at REAL,
    idem TEXT,
    record TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idem ON jobs (idem) WHERE idem IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_open ON jobs (status, created_at);
CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS job_inputs (job_id TEXT PRIMARY KEY, inputs TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS job_outputs (
    job_id TEXT NOT NULL, start INTEGER NOT NULL, outputs TEXT NOT NULL,
    PRIMARY KEY (job_id, start)
);
"""

FILE_NAME = "jobs.sqlite3"


class SQLiteJobStore(JobStore):
    """Job records in ``DATA_DIR/jobs.sqlite3``."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.path = Path(data_dir) / FILE_NAME
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():  # first use, or a forked child
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)  # one transaction of its own
            self._conn, self._pid = db, os.getpid()
        return self._conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._db()

    @staticmethod
    def _row(job: JobRecord) -> tuple[Any, ...]:
        return (job.status, job.lease_until, job.owner, job.expires_at, job.to_json(), job.id)

    def _put(self, db: sqlite3.Connection, job: JobRecord) -> None:
        db.execute("UPDATE jobs SET status=?, lease_until=?, owner=?, expires_at=?, record=? "
                   "WHERE id=?", self._row(job))

    @staticmethod
    def _load(db: sqlite3.Connection, job_id: str) -> JobRecord | None:
        row = db.execute("SELECT record FROM jobs WHERE id=?", (job_id,)).fetchone()
        return None if row is None else JobRecord.from_json(row[0])

    def create(self, job: JobRecord, inputs: list[bytes]) -> tuple[JobRecord, bool]:
        scope = idempotency_scope(job)
        with self._tx() as db:
            if scope is not None:
                row = db.execute("SELECT record FROM jobs WHERE idem=?", (scope,)).fetchone()
                if row is not None:
                    found = JobRecord.from_json(row[0])
                    if not found.expired(job.created_at):
                        return found, False
                    self._delete(db, found.id)  # expired, not yet purged: the key is free
            db.execute("INSERT INTO jobs (status, lease_until, owner, expires_at, record, id, "
                       "created_at, idem) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (*self._row(job), job.created_at, scope))
            db.execute("INSERT INTO job_inputs (job_id, inputs) VALUES (?, ?)",
                       (job.id, pack(inputs)))
        return job, True

    def get(self, job_id: str) -> JobRecord | None:
        with self._read() as db:
            job = self._load(db, job_id)
        # Expired but not purged yet (purges run once a minute): gone all the same.
        return None if job is None or job.expired(time.time()) else job

    def inputs(self, job_id: str) -> list[bytes]:
        with self._read() as db:
            row = db.execute("SELECT inputs FROM job_inputs WHERE job_id=?",
                             (job_id,)).fetchone()
        return [] if row is None else unpack(row[0])

    def update(self, job_id: str, change: Callable[[JobRecord], bool]) -> JobRecord | None:
        with self._tx() as db:
            job = self._load(db, job_id)
            if job is None or not change(job):
                return None
            self._put(db, job)
            return job

    def claim(self, owner: str, lease: float, limit: int, now: float, models: frozenset[str],
              stale_owners: frozenset[str] = frozenset()) -> list[JobRecord]:
        with self._tx() as db:
            stale = sorted(stale_owners)
            marks = ",".join("?" * len(stale)) or "NULL"
            keys = sorted(models)
            key_marks = ",".join("?" * len(keys)) or "NULL"
            rows = db.execute(
                "SELECT record FROM jobs WHERE (status='queued' OR (status='running' AND "
                f"(lease_until <= ? OR owner IN ({marks})))) AND json_extract(record, "
                f"'$.model') || ':' || json_extract(record, '$.version') IN ({key_marks}) "
                "ORDER BY created_at LIMIT ?",
                (now, *stale, *keys, limit)).fetchall()
            jobs = [JobRecord.from_json(r[0]) for r in rows]
            for job in jobs:
                job.take(owner, lease, now, stale_owners)
                self._put(db, job)
            return jobs

    def save_outputs(self, job_id: str, start: int, outputs: list[bytes]) -> int | None:
        with self._tx() as db:
            job = self._load(db, job_id)
            if job is None or job.finished:
                return None
            seen = db.execute("SELECT 1 FROM job_outputs WHERE job_id=? AND start=?",
                              (job_id, start)).fetchone()
            if seen is None:  # a slice computed twice (a runner took over) counts once
                db.execute("INSERT INTO job_outputs (job_id, start, outputs) VALUES (?, ?, ?)",
                           (job_id, start, pack(outputs)))
                job.done += len(outputs)
                self._put(db, job)
            return job.done

    def outputs(self, job_id: str) -> dict[int, list[bytes]]:
        with self._read() as db:
            rows = db.execute("SELECT start, outputs FROM job_outputs WHERE job_id=?",
                              (job_id,)).fetchall()
        return {start: unpack(text) for start, text in rows}

    def finish(self, job_id: str, status: Status, result: Any, error: dict[str, Any] | None,
               now: float, keep: float) -> JobRecord | None:
        assert status in FINISHED
        with self._tx() as db:
            job = self._load(db, job_id)
            if job is None or not job.end(status, result, error, now, keep):
                return None
            self._put(db, job)
            # Inputs and partial outputs are no longer needed: the record holds the result.
            self._delete(db, job_id, record=False)
            return job

    def running_owners(self) -> set[str]:
        with self._read() as db:
            rows = db.execute("SELECT DISTINCT owner FROM jobs WHERE status='running'").fetchall()
        return {r[0] for r in rows if r[0]}

    def lost(self, now: float, redeliver_after: float, limit: int) -> list[str]:
        with self._read() as db:
            rows = db.execute("SELECT record FROM jobs WHERE status IN ('queued', 'running') "
                              "ORDER BY created_at").fetchall()
        jobs = (JobRecord.from_json(r[0]) for r in rows)
        return [job.id for job in jobs if job.lost(now, redeliver_after)][:limit]

    def purge(self, now: float) -> int:
        with self._tx() as db:
            ids = [r[0] for r in db.execute(
                "SELECT id FROM jobs WHERE expires_at IS NOT NULL AND expires_at <= ?",
                (now,)).fetchall()]
            for job_id in ids:
                self._delete(db, job_id)
            return len(ids)

    @staticmethod
    def _delete(db: sqlite3.Connection, job_id: str, record: bool = True) -> None:
        if record:
            db.execute("DELETE FROM jobs WHERE id=?", (job_id,))
        db.execute("DELETE FROM job_inputs WHERE job_id=?", (job_id,))
        db.execute("DELETE FROM job_outputs WHERE job_id=?", (job_id,))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
