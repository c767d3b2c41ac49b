"""The JobStore contract, for the SQLite store and the Redis store (a real redis-server)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.jobs.records import JobRecord, JobStore, new_job_id
from corral.jobs.redis_store import RedisJobStore
from corral.jobs.sqlite import SQLiteJobStore
from tests.brokers import redis_server

T0 = time.time()  # records expire by the real clock in get()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


_DB = iter(range(1, 16))


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    if request.param == "sqlite":
        s: JobStore = SQLiteJobStore(tmp_path / "data")
    else:
        url = request.getfixturevalue("redis_url")
        s = RedisJobStore(url.rsplit("/", 1)[0] + f"/{next(_DB)}")
    yield s
    s.close()


def job(total: int = 2, key: str | None = None, at: float = T0, model: str = "m") -> JobRecord:
    return JobRecord(id=new_job_id(), model=model, version="1", total=total, is_batch=True,
                     per_item_errors=False, created_at=at, sent_at=at, idempotency_key=key)


def test_create_get_inputs(store: JobStore) -> None:
    j, created = store.create(job(), [b'{"a":1}', b'{"a":2}'])
    assert created
    got = store.get(j.id)
    assert got is not None and got.status == "queued" and got.total == 2
    assert store.inputs(j.id) == [b'{"a":1}', b'{"a":2}']
    assert store.get(new_job_id()) is None


def test_idempotency_key_is_per_model(store: JobStore) -> None:
    first, created = store.create(job(key="k"), [b"{}"])
    again, created_again = store.create(job(key="k"), [b"{}"])
    assert created and not created_again and again.id == first.id
    other, created_other = store.create(job(key="k", model="n"), [b"{}"])
    assert created_other and other.id != first.id


def test_concurrent_submits_with_one_key_make_one_job(store: JobStore) -> None:
    ids: list[str] = []

    def create() -> None:
        ids.append(store.create(job(key="race"), [b"{}"])[0].id)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1


def test_lease_excludes_others_until_it_runs_out(store: JobStore) -> None:
    j, _ = store.create(job(), [b"{}"])
    started = store.start(j.id, "a", 10, T0)
    assert started is not None and started.attempts == 1 and started.owner == "a"
    assert store.start(j.id, "b", 10, T0 + 5) is None  # leased to a
    assert store.renew(j.id, "a", 10, T0 + 5)  # a renews until T0 + 15
    assert not store.renew(j.id, "b", 10, T0 + 5)
    assert store.start(j.id, "b", 10, T0 + 14) is None
    taken = store.start(j.id, "b", 10, T0 + 16)  # a's lease ran out
    assert taken is not None and taken.attempts == 2 and taken.owner == "b"
    assert not store.renew(j.id, "a", 10, T0 + 16)  # a learns it lost the job


def test_claim_takes_oldest_runnable_and_stale_owners(store: JobStore) -> None:
    older, _ = store.create(job(at=T0), [b"{}"])
    newer, _ = store.create(job(at=T0 + 1), [b"{}"])
    other, _ = store.create(job(at=T0 - 1, model="other"), [b"{}"])
    ours = frozenset({"m:1"})
    claimed = store.claim("a", 10, 1, T0 + 2, ours)
    assert [c.id for c in claimed] == [older.id]  # not the other model's older job
    assert [c.id for c in store.claim("b", 10, 5, T0 + 2, ours)] == [newer.id]
    assert store.claim("c", 10, 5, T0 + 3, ours) == []
    assert store.running_owners() == {"a", "b"}
    rescued = store.claim("c", 10, 5, T0 + 3, ours, stale_owners=frozenset({"a"}))
    assert [c.id for c in rescued] == [older.id]
    assert [c.id for c in store.claim("d", 10, 5, T0 + 3, frozenset({"other:1"}))] == [other.id]


def test_outputs_resume_and_count_once(store: JobStore) -> None:
    j, _ = store.create(job(total=4), [b"{}"] * 4)
    store.start(j.id, "a", 10, T0)
    assert store.save_outputs(j.id, 0, [b"1", b"2"]) == 2
    assert store.save_outputs(j.id, 0, [b"1", b"2"]) == 2  # computed again after a takeover
    assert store.save_outputs(j.id, 2, [b"3", b"4"]) == 4
    assert store.outputs(j.id) == {0: [b"1", b"2"], 2: [b"3", b"4"]}


def test_first_result_wins_and_finished_jobs_expire(store: JobStore) -> None:
    j, _ = store.create(job(key="fin"), [b"{}"])
    store.start(j.id, "a", 10, T0)
    done = store.finish(j.id, "succeeded", [1], None, T0 + 1, keep=3600)
    assert done is not None and done.expires_at == T0 + 1 + 3600 and done.done == 2
    assert store.finish(j.id, "failed", None, {"type": "x"}, T0 + 2, keep=3600) is None
    assert store.finish(j.id, "cancelled", None, None, T0 + 2, keep=3600) is None
    final = store.get(j.id)
    assert final is not None and final.status == "succeeded" and final.result == [1]
    assert store.save_outputs(j.id, 0, [b"1"]) is None  # a late runner is told to stop
    assert store.start(j.id, "b", 10, T0 + 100) is None
    assert store.inputs(j.id) == []  # no longer needed


def test_cancel_stops_the_runner(store: JobStore) -> None:
    j, _ = store.create(job(), [b"{}"] * 2)
    store.start(j.id, "a", 10, T0)
    assert store.finish(j.id, "cancelled", None, None, T0 + 1, keep=60) is not None
    assert not store.renew(j.id, "a", 10, T0 + 2)
    assert store.save_outputs(j.id, 0, [b"1"]) is None


def test_lost_and_requeue(store: JobStore) -> None:
    queued, _ = store.create(job(at=T0), [b"{}"])
    running, _ = store.create(job(at=T0), [b"{}"])
    store.start(running.id, "a", 10, T0)
    assert store.lost(T0 + 5, redeliver_after=100, limit=10) == []
    assert store.lost(T0 + 11, redeliver_after=100, limit=10) == [running.id]  # lease ran out
    assert set(store.lost(T0 + 101, redeliver_after=100, limit=10)) == {queued.id, running.id}
    assert store.requeue(running.id, T0 + 11, 100)
    assert not store.requeue(running.id, T0 + 11, 100)  # only one sweeper sends it again
    again = store.get(running.id)
    assert again is not None and again.status == "queued" and again.owner is None


def test_purge_removes_expired(store: JobStore, tmp_path: Path) -> None:
    j, _ = store.create(job(), [b"{}"])
    store.finish(j.id, "succeeded", [1], None, T0, keep=3600)
    if isinstance(store, SQLiteJobStore):
        assert store.purge(T0 + 1800) == 0 and store.get(j.id) is not None
        assert store.purge(T0 + 3601) == 1
        assert store.get(j.id) is None
    else:  # Redis expires the records itself; purge forgets ids whose record is gone
        queued, _ = store.create(job(), [b"{}"])
        store.r.delete(f"corral:job:{queued.id}")  # as if it had expired
        assert store.purge(T0) == 1
        assert store.purge(T0) == 0


def test_release_gives_a_job_back_without_counting_the_attempt(store: JobStore) -> None:
    j, _ = store.create(job(), [b"{}"])
    store.start(j.id, "a", 10, T0)
    assert not store.release(j.id, "b")
    assert store.release(j.id, "a")
    back = store.get(j.id)
    assert back is not None and back.status == "queued" and back.attempts == 0
    again = store.start(j.id, "b", 10, T0 + 1)  # at once, not after the lease
    assert again is not None and again.attempts == 1


def test_start_takes_over_from_a_stale_owner(store: JobStore) -> None:
    j, _ = store.create(job(), [b"{}"])
    store.start(j.id, "dead", 10, T0)
    assert store.start(j.id, "b", 10, T0 + 1) is None
    taken = store.start(j.id, "b", 10, T0 + 1, frozenset({"dead"}))
    assert taken is not None and taken.owner == "b"


def test_resends_back_off(store: JobStore) -> None:
    j, _ = store.create(job(at=T0), [b"{}"])
    assert store.requeue(j.id, T0 + 100, 100)  # first resend after 100 s
    assert not store.lost(T0 + 250, 100, 10)  # the next after 200 s more
    assert store.lost(T0 + 300, 100, 10) == [j.id]


def test_redis_removes_a_finished_job_when_it_expires(redis_url: str) -> None:

    s = RedisJobStore(redis_url.rsplit("/", 1)[0] + f"/{next(_DB)}")
    j, _ = s.create(job(key="ttl"), [b"{}"])
    s.finish(j.id, "succeeded", [1], None, time.time(), keep=1)
    assert s.get(j.id) is not None
    time.sleep(2.2)
    assert s.get(j.id) is None  # the record, and its idempotency key, are gone
    assert s.create(job(key="ttl"), [b"{}"])[1]
    s.close()


def test_an_expired_idempotency_key_is_free_again(tmp_path: Path) -> None:
    s = SQLiteJobStore(tmp_path)
    old, _ = s.create(job(key="k", at=T0), [b"{}"])
    s.finish(old.id, "succeeded", [1], None, T0, keep=10)
    fresh, created = s.create(job(key="k", at=T0 + 11), [b"{}"])
    assert created and fresh.id != old.id
    s.close()


def test_sqlite_survives_reopening(tmp_path: Path) -> None:
    first = SQLiteJobStore(tmp_path)
    j, _ = first.create(job(), [b'{"x":1}'])
    first.close()
    second = SQLiteJobStore(tmp_path)
    got = second.get(j.id)
    assert got is not None and got.status == "queued" and second.inputs(j.id) == [b'{"x":1}']
    mode = second._db().execute("PRAGMA journal_mode").fetchone()[0]
    SQLiteJobStore(tmp_path / "never")
    assert not (tmp_path / "never").exists()  # nothing is created before first use
    assert mode == "wal"
    second.close()
