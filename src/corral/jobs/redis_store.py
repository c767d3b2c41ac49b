"""RedisJobStore: job records in Redis, seen by every instance and worker.

Keys (prefix ``corral:``)::

    job:ID        the record (JSON); expires CORRAL_JOB_TTL seconds after the job finishes
    job:ID:in     the input documents (JSON array of JSON texts), until it finishes
    job:ID:out    hash: first input index of a slice -> its outputs, until it finishes
    idem:MODEL\\0KEY  the id of the job made with that idempotency key; expires with it
    open          sorted set of unfinished job ids, by creation time (for sweeps)

Every change to a record is a WATCH/MULTI transaction, so two workers never both
start one job and the first result wins. Durability is Redis's: run it with
``appendonly yes`` (docs/jobs.md says what is lost otherwise).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis

from .records import FINISHED, JobRecord, JobStore, Status, idempotency_scope, pack, unpack

_P = "corral:"


class RedisJobStore(JobStore):
    """Job records in the Redis database of ``url``."""

    def __init__(self, url: str) -> None:
        self.url = url
        # Typed loosely: redis-py's return types are unions of every reply kind.
        self.r: Any = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=10,
                                           health_check_interval=30, decode_responses=True)

    @staticmethod
    def _key(job_id: str) -> str:
        return f"{_P}job:{job_id}"

    def update(self, job_id: str, change: Callable[[JobRecord], bool],
               after: Callable[[Any, JobRecord], None] | None = None) -> JobRecord | None:
        """``after`` adds commands to the same transaction once ``change`` applied."""
        key = self._key(job_id)
        pipe: Any
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        pipe.unwatch()
                        return None
                    job = JobRecord.from_json(raw)
                    if not change(job):
                        pipe.unwatch()
                        return None
                    pipe.multi()
                    if job.finished and job.expires_at is not None:
                        ttl = max(1, int(job.expires_at - time.time()) + 1)
                        pipe.set(key, job.to_json(), ex=ttl)
                    else:
                        pipe.set(key, job.to_json())
                    if after is not None:
                        after(pipe, job)
                    pipe.execute()
                    return job
                except redis.WatchError:
                    continue

    def create(self, job: JobRecord, inputs: list[bytes]) -> tuple[JobRecord, bool]:
        scope = idempotency_scope(job)
        if scope is not None:
            idem = f"{_P}idem:{scope}"
            for _ in range(50):
                if self.r.set(idem, job.id, nx=True):
                    break
                existing = self.r.get(idem)
                if existing is not None:
                    found = self.get(existing)
                    if found is not None:
                        return found, False
                time.sleep(0.02)  # being made by a concurrent submit, or left by a crash
            else:
                self.r.set(idem, job.id)  # its maker died before storing the job
        with self.r.pipeline() as pipe:
            pipe.set(self._key(job.id), job.to_json())
            pipe.set(f"{self._key(job.id)}:in", pack(inputs))
            pipe.zadd(f"{_P}open", {job.id: job.created_at})
            pipe.execute()
        return job, True

    def get(self, job_id: str) -> JobRecord | None:
        raw = self.r.get(self._key(job_id))
        return None if raw is None else JobRecord.from_json(raw)

    def inputs(self, job_id: str) -> list[bytes]:
        raw = self.r.get(f"{self._key(job_id)}:in")
        return [] if raw is None else unpack(raw)

    def claim(self, owner: str, lease: float, limit: int, now: float, models: frozenset[str],
              stale_owners: frozenset[str] = frozenset()) -> list[JobRecord]:
        jobs: list[JobRecord] = []
        for job in self._open_jobs():
            if len(jobs) >= limit:
                break
            if job.key not in models:
                continue
            started = self.start(job.id, owner, lease, now, stale_owners)
            if started is not None:
                jobs.append(started)
        return jobs

    def save_outputs(self, job_id: str, start: int, outputs: list[bytes]) -> int | None:
        out_key = f"{self._key(job_id)}:out"

        def change(job: JobRecord) -> bool:
            if job.finished or self.r.hexists(out_key, str(start)):
                return False
            job.done += len(outputs)
            return True

        def after(pipe: Any, job: JobRecord) -> None:
            pipe.hset(out_key, str(start), pack(outputs))

        job = self.update(job_id, change, after)
        if job is None:
            current = self.get(job_id)
            return None if current is None or current.finished else current.done
        return job.done

    def outputs(self, job_id: str) -> dict[int, list[bytes]]:
        raw = self.r.hgetall(f"{self._key(job_id)}:out")
        return {int(k): unpack(v) for k, v in raw.items()}

    def finish(self, job_id: str, status: Status, result: Any, error: dict[str, Any] | None,
               now: float, keep: float) -> JobRecord | None:
        assert status in FINISHED

        def after(pipe: Any, job: JobRecord) -> None:
            pipe.delete(f"{self._key(job_id)}:in", f"{self._key(job_id)}:out")
            pipe.zrem(f"{_P}open", job_id)
            scope = idempotency_scope(job)
            if scope is not None:
                pipe.expire(f"{_P}idem:{scope}", max(1, int(keep) + 1))

        return self.update(job_id, lambda job: job.end(status, result, error, now, keep),
                            after)

    def _open_jobs(self) -> list[JobRecord]:
        ids: list[str] = self.r.zrange(f"{_P}open", 0, -1)
        if not ids:
            return []
        raws = self.r.mget([self._key(i) for i in ids])
        return [JobRecord.from_json(raw) for raw in raws if raw is not None]

    def running_owners(self) -> set[str]:
        return {j.owner for j in self._open_jobs() if j.status == "running" and j.owner}

    def lost(self, now: float, redeliver_after: float, limit: int) -> list[str]:
        return [j.id for j in self._open_jobs() if j.lost(now, redeliver_after)][:limit]

    def purge(self, now: float) -> int:
        # Records expire by themselves; only ids of jobs that vanished stay in "open".
        ids: list[str] = self.r.zrange(f"{_P}open", 0, -1)
        gone = [i for i, exists in zip(ids, self._exists(ids)) if not exists]
        if gone:
            self.r.zrem(f"{_P}open", *gone)
        return len(gone)

    def _exists(self, ids: list[str]) -> list[bool]:
        with self.r.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.exists(self._key(i))
            return [bool(x) for x in pipe.execute()]

    def close(self) -> None:
        self.r.close()
