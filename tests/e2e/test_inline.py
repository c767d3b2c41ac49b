"""Inline placement under `corral serve`: models inside each HTTP worker, beside models in
processes of their own, with the same API."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import pytest
import requests

from tests.conftest import APPS, ServerProcess
from tests.e2e.test_workers import http_workers, metric, post
from tests.proctree import descendants, wait_until

pytestmark = pytest.mark.slow

INLINE = str(APPS / "inline.py")
FULL = f"{INLINE}:app"
Serve = Callable[..., ServerProcess]
# Idle keep-alive connections of the test client hold a gevent worker until the
# graceful timeout when the server stops: keep it short.
ENV = {"CORRAL_INLINE_MEMORY_WARN_MB": "16", "CORRAL_ADMIN_TOKEN": "tok",
       "CORRAL_GRACEFUL_TIMEOUT": "3"}


def worker_pids(server: ServerProcess) -> set[int]:
    return {p.pid for p in http_workers(server)}


@pytest.mark.parametrize("worker_class", ["gthread", "gevent"])
def test_inline_models_run_in_each_http_worker_with_the_same_api(serve: Serve,
                                                                   worker_class: str) -> None:
    server = serve(FULL, "--workers", "2", "--worker-class", worker_class, env=ENV)
    replicas = sorted(p.model for p in descendants(server.proc.pid) if p.role == "replica")
    assert replicas == ["sum:1"]  # no process for any inline model
    workers = worker_pids(server)
    assert len(workers) == 2

    # Computed inside an HTTP worker, and the same answer as the model in a process.
    inline = post(server, "/v1/models/inline-sum/predict", {"values": [1, 2.5]})
    remote = post(server, "/v1/models/sum/predict", {"values": [1, 2.5]})
    assert inline.status_code == remote.status_code == 200
    assert inline.json()["pid"] in workers
    assert remote.json()["pid"] not in workers
    assert inline.json()["total"] == remote.json()["total"] == 3.5

    # The same errors, byte for byte but for the model's name.
    for body in ({"values": []}, {"values": [1], "extra": 1}, {"values": [1], "reject": True}):
        a = post(server, "/v1/models/inline-sum/predict", body)
        b = post(server, "/v1/models/sum/predict", body)
        assert a.status_code == b.status_code and a.status_code in (400, 422), a.text
        assert a.json() == b.json()
    poisoned = post(server, "/v1/models/inline-sum/predict", {"values": [1], "poison": True})
    assert poisoned.status_code == 500 and poisoned.json()["type"] == "model-error"
    assert "secret" not in poisoned.text
    assert post(server, "/v1/models/inline-broken/predict", {"word": "a"}).json()["type"] \
        == "model-failed"

    # Requests to one worker batch together while its replica is busy.
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: post(server, "/v1/models/inline-sum/predict",
                                               {"values": [1], "delay": 0.3}), range(12)))
    assert all(a.status_code == 200 for a in answers)
    assert max(a.json()["batch_size"] for a in answers) > 1

    # A deadline passes while the inline replica computes: 504 in time (the worker's wait
    # on the replica thread gives up, under gevent too), and the worker still serves.
    started = time.monotonic()
    late = requests.post(server.url + "/v1/models/inline-sum/predict",
                         json={"values": [1], "delay": 1.5},
                         headers={"X-Request-Timeout": "0.3"}, timeout=10)
    assert late.status_code == 504 and late.json()["type"] == "timeout", late.text
    assert time.monotonic() - started < 1.2
    assert post(server, "/v1/models/inline-sum/predict", {"values": [2]}).status_code == 200

    # Counted in /metrics, whichever worker answered.
    text = requests.get(server.url + "/metrics", timeout=10).text
    assert metric(text, "corral_requests_total", model="inline-sum", version="1",
                  status="200") == 14
    assert metric(text, "corral_requests_total", model="inline-sum", version="1",
                  status="504") == 1
    assert metric(text, "corral_batch_size_count", model="inline-sum") >= 1

    # Jobs of an inline model run in the HTTP workers, with the answer predict gives.
    job = post(server, "/v1/models/inline-sum/jobs", [{"values": [1, 2.5]}, {"values": [4]}])
    assert job.status_code == 202
    done = requests.get(f"{server.url}/v1/jobs/{job.json()['id']}?wait=20", timeout=30).json()
    assert done["status"] == "succeeded", done
    assert [r["total"] for r in done["result"]] == [3.5, 4.0]
    assert {r["pid"] for r in done["result"]} <= workers

    # The admin API cannot scale a model that lives in every worker: a clear 409.
    for method, path, body in (("PUT", "replicas", {"replicas": 2}), ("POST", "unload", None),
                               ("POST", "load", None)):
        answer = requests.request(method, f"{server.url}/v1/models/inline-sum/{path}",
                                  json=body, headers={"Authorization": "Bearer tok"}, timeout=10)
        assert answer.status_code == 409 and answer.json()["type"] == "model-inline", answer.text
    assert requests.put(f"{server.url}/v1/models/sum/replicas", json={"replicas": 1},
                        headers={"Authorization": "Bearer tok"}, timeout=10).status_code == 202

    # The model that grew its worker past CORRAL_INLINE_MEMORY_WARN_MB is named, per worker.
    log = server.log()
    for pid in workers:
        assert f"HTTP worker {pid} has grown by" in log
    assert "growing:1" in log


SMALL = f"{INLINE}:small"


def test_an_inline_crash_takes_its_worker_only(serve: Serve) -> None:
    server = serve(SMALL, "--workers", "2", env=ENV)
    before = worker_pids(server)
    with pytest.raises(requests.ConnectionError):
        post(server, "/v1/models/inline-sum/predict", {"values": [1], "die": True})

    def replaced() -> bool:
        now = worker_pids(server)
        return len(now) == 2 and now != before

    wait_until(replaced, 30, "Gunicorn to start a new HTTP worker")
    # The new worker loaded its own copy before taking requests: nothing answers 503.
    answers = [post(server, "/v1/models/inline-sum/predict", {"values": [2]}) for _ in range(20)]
    assert [a.status_code for a in answers] == [200] * 20
    assert {a.json()["pid"] for a in answers} <= worker_pids(server)
    assert post(server, "/v1/models/sum/predict", {"values": [2]}).status_code == 200
    assert server.stop() == 0


def test_a_job_of_an_inline_model_survives_its_workers(serve: Serve) -> None:
    server = serve(SMALL, "--workers", "2", env=ENV)
    body = [{"values": [i], "delay": 0.2} for i in range(24)]  # 3 slices of 8, ~0.6 s
    job = post(server, "/v1/models/inline-sum/jobs", body).json()

    def running() -> bool:
        got = requests.get(f"{server.url}/v1/jobs/{job['id']}", timeout=10).json()
        return bool(got["status"] == "running" and got["progress"]["done"] >= 8)

    wait_until(running, 30, "the job to be part done")
    for worker in http_workers(server):  # whichever ran it, and every other one
        os.kill(worker.pid, signal.SIGKILL)
    done: dict[str, Any] = {}

    def finished() -> bool:
        done.update(requests.get(f"{server.url}/v1/jobs/{job['id']}?wait=5", timeout=30).json())
        return done["status"] not in ("queued", "running")

    wait_until(finished, 60, "the job to finish")
    assert done["status"] == "succeeded", done
    assert [r["total"] for r in done["result"]] == [float(i) for i in range(24)]
    assert done["attempts"] == 2


def test_a_hung_inline_model_gets_its_worker_replaced(serve: Serve) -> None:
    server = serve(SMALL, "--workers", "1", env={**ENV, "CORRAL_STALL_GRACE": "1",
                                                  "CORRAL_GRACEFUL_TIMEOUT": "2"})
    before = worker_pids(server)
    hung = post(server, "/v1/models/inline-sum/predict", {"values": [1], "spin": 10},
                headers={"X-Request-Timeout": "0.5"})
    assert hung.status_code == 504
    wait_until(lambda: worker_pids(server) and worker_pids(server) != before, 30,
               "Gunicorn to replace the worker")
    answer = post(server, "/v1/models/inline-sum/predict", {"values": [2]})
    assert answer.status_code == 200 and answer.json()["pid"] not in before
    assert "is hung in predict()" in server.log()
