"""Jobs on Celery: real Redis and RabbitMQ servers, real `corral worker` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.brokers import rabbitmq_server, redis_server
from tests.conftest import APPS, CORRAL, ROOT, ServerProcess, start_server
from tests.e2e.test_jobs import kill_tree, submit, wait_finished
from tests.proctree import descendants

pytestmark = pytest.mark.slow

APP = str(APPS / "jobs.py")


@pytest.fixture(scope="module")
def brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    base = tmp_path_factory.mktemp("brokers")
    with redis_server(base / "redis") as redis_url, rabbitmq_server(base / "rabbit") as amqp:
        yield {"redis": redis_url, "amqp": amqp}


_DB = iter(range(1, 16))


def job_env(brokers: dict[str, str], kind: str, **extra: str) -> dict[str, str]:
    """A broker and record store no other test uses (its own Redis database / queue)."""
    db = next(_DB)
    redis_url = brokers["redis"].rsplit("/", 1)[0] + f"/{db}"
    env = {"CORRAL_BROKER_URL": redis_url if kind == "redis" else brokers["amqp"],
           "CORRAL_JOB_STORE_URL": redis_url, "CORRAL_JOB_QUEUE": f"jobs-{db}",
           "CORRAL_JOB_LEASE": "3", **extra}
    return env


class Worker:
    """A running `corral worker APP`."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.log_path = directory / f"worker-{time.monotonic_ns()}.log"
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [*CORRAL, "worker", APP], cwd=directory, stdout=log, stderr=subprocess.STDOUT,
                env={**inherited, "PYTHONPATH": str(ROOT), **env}, start_new_session=True)
        deadline = time.monotonic() + 60
        while "corral worker ready" not in self.log():
            assert self.proc.poll() is None, self.log()
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                for p in descendants(self.proc.pid):
                    os.kill(p.pid, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Any]:
    started: list[Worker] = []

    def start(env: dict[str, str]) -> Worker:
        started.append(Worker(tmp_path, env))
        return started[-1]

    yield start
    for w in started:
        w.stop()


@pytest.mark.parametrize("kind,worker_class", [("redis", "gthread"), ("amqp", "gthread"),
                                               ("redis", "gevent")])
def test_jobs_run_on_workers(brokers: dict[str, str], serve: Any, workers: Any, tmp_path: Path,
                             kind: str, worker_class: str) -> None:
    record = tmp_path / "computed.txt"
    env = job_env(brokers, kind, SUM_RECORD_FILE=str(record))
    server = serve(APP, "--worker-class", worker_class, env=env)
    # Before any worker runs, an accepted job is queued, not unknown.
    early = submit(server, [{"values": [i]} for i in range(40)]).json()
    got = requests.get(f"{server.url}/v1/jobs/{early['id']}", timeout=10)
    assert got.status_code == 200 and got.json()["status"] == "queued"
    assert requests.get(f"{server.url}/v1/jobs/{'B' * 22}", timeout=10).status_code == 404
    worker = workers(env)
    done = wait_finished(server, early["id"])
    assert done["status"] == "succeeded", (done, worker.log())
    assert [r["total"] for r in done["result"]] == list(range(40))
    # Computed by the worker's own replica, in batches (max_size 8), not one by one.
    assert max(r["batch_size"] for r in done["result"]) > 1
    assert {r["pid"] for r in done["result"]} <= {p.pid for p in descendants(worker.proc.pid)}
    bad = submit(server, [{"values": "x"}])
    assert bad.status_code == 422  # refused at submit: never a task
    failing = submit(server, [{"values": [1]}, {"values": [2], "poison": True}]).json()
    failed = wait_finished(server, failing["id"])
    assert failed["status"] == "failed" and failed["error"]["item"] == 1
    assert failed["attempts"] == 1  # a model error is not retried


def test_idempotency_and_cancel_across_two_instances(brokers: dict[str, str], serve: Any,
                                                     workers: Any, tmp_path: Path) -> None:
    env = job_env(brokers, "redis")
    a, b = serve(APP, env=env), serve(APP, env=env)
    key = {"Idempotency-Key": "same-key"}
    first = submit(a, {"values": [1]}, headers=key).json()
    second = submit(b, {"values": [1]}, headers=key)
    assert second.json()["id"] == first["id"] and second.headers["Idempotent-Replayed"] == "true"
    cancelled = submit(a, {"values": [99]}).json()
    resp = requests.delete(f"{b.url}/v1/jobs/{cancelled['id']}", timeout=10)
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    workers(env)
    assert wait_finished(b, first["id"])["status"] == "succeeded"  # submitted to a, read on b
    assert requests.get(f"{a.url}/v1/jobs/{cancelled['id']}",
                        timeout=10).json()["status"] == "cancelled"


@pytest.mark.parametrize("kind", ["redis", "amqp"])
def test_kill_9_the_worker_mid_task_the_job_completes(brokers: dict[str, str], serve: Any,
                                                      workers: Any, kind: str) -> None:
    env = job_env(brokers, kind)
    server = serve(APP, env=env)
    first = workers(env)
    job = submit(server, [{"values": [i], "delay": 1.0} for i in range(24)]).json()
    deadline = time.monotonic() + 30
    while requests.get(f"{server.url}/v1/jobs/{job['id']}", timeout=10).json()[
            "progress"]["done"] == 0:
        assert time.monotonic() < deadline, first.log()
        time.sleep(0.05)
    victim = ServerProcess(first.proc, 0, first.log_path)
    kill_tree(victim, roles={"jobs", "dispatcher", "replica"})
    workers(env)
    done = wait_finished(server, job["id"], timeout=120)
    assert done["status"] == "succeeded", done
    assert [r["total"] for r in done["result"]] == list(range(24))
    assert done["attempts"] >= 2


def test_kill_9_a_pool_process_the_task_is_delivered_again(brokers: dict[str, str],
                                                           serve: Any, workers: Any) -> None:
    env = job_env(brokers, "amqp", CORRAL_WORKER_CONCURRENCY="2")
    server = serve(APP, env=env)
    worker = workers(env)
    jobs_proc = next(p for p in descendants(worker.proc.pid) if p.role == "jobs")
    job = submit(server, [{"values": [i], "delay": 1.0} for i in range(16)]).json()
    deadline = time.monotonic() + 30
    while requests.get(f"{server.url}/v1/jobs/{job['id']}", timeout=10).json()[
            "status"] != "running":
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.05)
    pool = [p for p in descendants(jobs_proc.pid) if p.role == "jobs-pool"]
    assert pool, worker.log()
    for p in pool:
        os.kill(p.pid, signal.SIGKILL)
    done = wait_finished(server, job["id"], timeout=120)
    assert done["status"] == "succeeded", (done, worker.log())
    assert done["attempts"] >= 2


def test_a_thousand_jobs_through_redis_none_lost(brokers: dict[str, str], serve: Any,
                                                 workers: Any) -> None:
    env = job_env(brokers, "redis")
    server = serve(APP, "--workers", "2", env=env)
    workers(env)
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda i: submit(server, {"values": [i]}).json()["id"],
                            range(1000)))
    pending, results = set(ids), {}
    deadline = time.monotonic() + 180
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            job = requests.get(f"{server.url}/v1/jobs/{job_id}", timeout=10).json()
            assert job["status"] in ("queued", "running", "succeeded"), job
            if job["status"] == "succeeded":
                results[job_id] = job["result"]["total"]
                pending.discard(job_id)
        time.sleep(0.5)
    assert not pending, f"{len(pending)} of 1000 jobs not finished"
    assert sorted(results.values()) == list(range(1000))
