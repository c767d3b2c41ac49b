"""The process tree of `corral serve`: batching across HTTP workers, failures, shutdown.

Every wait is bounded and generous: these run on a loaded 2-core machine, so the
tests assert on outcomes and order, never on tight timings.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import pytest
import requests

from tests.conftest import APPS, ServerProcess
from tests.proctree import Proc, alive, descendants, wait_until

pytestmark = pytest.mark.slow

BASIC = str(APPS / "basic.py")
Serve = Callable[..., ServerProcess]
FAST_LOAD = {"SLOW_LOAD_SECONDS": "0"}


def post(server: ServerProcess, path: str, body: Any, **kw: Any) -> requests.Response:
    kw.setdefault("timeout", 60)
    return requests.post(server.url + path, json=body, **kw)


def model_procs(server: ServerProcess, role: str, model: str) -> list[Proc]:
    """The replica processes of one model (by name, any version)."""
    return [p for p in descendants(server.proc.pid)
            if p.role == role and p.model.rpartition(":")[0] == model]


def dispatchers(server: ServerProcess) -> list[Proc]:
    """The dispatcher process (one for every model) of a server."""
    return [p for p in descendants(server.proc.pid) if p.role == "dispatcher"]


def flushed(server: ServerProcess, record: Path, value: int) -> None:
    """Send ``value`` through the sum model's FIFO queue and wait until it is computed:
    anything queued before it that was going to be computed has been by then."""
    assert post(server, "/v1/models/sum/predict", {"values": [value]}).status_code == 200
    computing(record, value)


def computing(record: Path, value: int, timeout: float = 30) -> None:
    """Wait until the sum replica has started computing ``value`` (SUM_RECORD_FILE)."""
    wait_until(lambda: record.exists() and f"[{float(value)}]" in record.read_text(), timeout,
               f"the replica to start computing {value}")


def http_workers(server: ServerProcess) -> list[Proc]:
    masters = [p for p in descendants(server.proc.pid) if p.role == "http"
               and p.ppid == server.proc.pid]
    return [p for p in descendants(masters[0].pid)] if masters else []


@pytest.mark.parametrize("worker_class", ["gthread", "gevent"])
def test_batches_form_across_http_workers_on_one_model_copy(serve: Serve,
                                                            worker_class: str) -> None:
    server = serve(BASIC, "--workers", "4", "--threads", "1", "--worker-class", worker_class,
                   env=FAST_LOAD)
    wait_until(lambda: len(http_workers(server)) == 4, 30, "four HTTP workers")
    body = {"values": [2, 3], "delay": 0.3}
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda _: post(server, "/v1/models/sum/predict", body),
                                  range(16)))
    assert [r.status_code for r in responses] == [200] * 16, [r.text for r in responses]
    sizes = [r.json()["batch_size"] for r in responses]
    assert max(sizes) > 1, sizes
    if worker_class == "gthread":
        # One thread per HTTP worker: a worker has one request in flight at a time, so
        # any batch larger than one holds requests from several workers.
        assert max(sizes) <= 4
    assert max(sizes) <= 8  # the model's max_size
    pids = {r.json()["pid"] for r in responses}
    replicas = model_procs(server, "replica", "sum")
    assert len(replicas) == 1 and pids == {replicas[0].pid}
    http_pids = {p.pid for p in http_workers(server)}
    assert not pids & http_pids  # no HTTP worker computed anything


@pytest.mark.parametrize("worker_class", ["gthread", "gevent"])
def test_killing_a_replica_fails_only_its_batch(serve: Serve, worker_class: str) -> None:
    server = serve(BASIC, "--worker-class", worker_class, env=FAST_LOAD)
    (replica,) = model_procs(server, "replica", "sum")
    results: dict[str, requests.Response] = {}

    def call(name: str, body: dict[str, Any]) -> None:
        results[name] = post(server, "/v1/models/sum/predict", body)

    # The first request occupies the replica for 10 s; the second waits in the queue.
    computing = threading.Thread(target=call, args=("computing", {"values": [1], "delay": 10}))
    computing.start()
    wait_until(lambda: post(server, "/v1/models/sum/predict", {"values": [0]},
                            headers={"X-Request-Timeout": "0.2"}).status_code == 504,
               20, "the replica to be busy")
    queued = threading.Thread(target=call, args=("queued", {"values": [5]}))
    queued.start()
    time.sleep(0.5)
    killed_at = time.monotonic()
    os.kill(replica.pid, signal.SIGKILL)
    computing.join(30)
    crashed = results["computing"]
    assert crashed.status_code == 502 and crashed.json()["type"] == "worker-crashed"
    assert "Retry-After" not in crashed.headers
    assert time.monotonic() - killed_at < 8  # answered when the replica died, not after 10 s
    queued.join(60)
    assert results["queued"].status_code == 200 and results["queued"].json()["total"] == 5
    (replacement,) = model_procs(server, "replica", "sum")
    assert replacement.pid != replica.pid
    assert results["queued"].json()["pid"] == replacement.pid
    # Other models never noticed; the model is back to full service.
    assert post(server, "/v1/models/echo/predict", {"word": "ok"}).status_code == 200
    assert post(server, "/v1/models/sum/predict", {"values": [7]}).json()["total"] == 7


def test_killing_an_http_worker_keeps_the_models(serve: Serve) -> None:
    server = serve(BASIC, "--workers", "2", env=FAST_LOAD)
    before = post(server, "/v1/models/sum/predict", {"values": [1]}).json()["pid"]
    victim = http_workers(server)[0]
    os.kill(victim.pid, signal.SIGKILL)
    wait_until(lambda: len(http_workers(server)) == 2
               and victim.pid not in {p.pid for p in http_workers(server)}, 30,
               "Gunicorn to replace the worker")
    for _ in range(10):
        resp = post(server, "/v1/models/sum/predict", {"values": [1]})
        assert resp.status_code == 200 and resp.json()["pid"] == before


@pytest.mark.parametrize("worker_class", ["gthread", "gevent"])
def test_killing_a_dispatcher_fails_waiters_fast_and_recovers(serve: Serve, tmp_path: Path,
                                                             worker_class: str) -> None:
    record = tmp_path / "computed.txt"
    server = serve(BASIC, "--worker-class", worker_class,
                   env={**FAST_LOAD, "SUM_RECORD_FILE": str(record)})
    (dispatcher,) = dispatchers(server)
    result: dict[str, requests.Response] = {}
    waiter = threading.Thread(target=lambda: result.setdefault(
        "r", post(server, "/v1/models/sum/predict", {"values": [31], "delay": 10})))
    waiter.start()
    computing(record, 31)
    killed_at = time.monotonic()
    os.kill(dispatcher.pid, signal.SIGKILL)
    waiter.join(30)
    assert result["r"].status_code == 502, result["r"].text
    assert time.monotonic() - killed_at < 8  # failed fast, not after the 10 s predict
    wait_until(lambda: [p.pid for p in dispatchers(server)] not in ([], [dispatcher.pid]), 30,
               "a new dispatcher")

    def serves() -> bool:
        r = post(server, "/v1/models/sum/predict", {"values": [4]})
        return r.status_code == 200 and r.json()["total"] == 4

    wait_until(serves, 60, "the model to serve again")


@pytest.mark.parametrize("worker_class", ["gthread", "gevent"])
def test_queue_full_loading_and_timeout_answers(serve: Serve, tmp_path: Path,
                                                worker_class: str) -> None:
    record = tmp_path / "computed.txt"
    server = serve(BASIC, "--worker-class", worker_class, ready_path="/healthz",
                   env={"SLOW_LOAD_SECONDS": "5", "SUM_RECORD_FILE": str(record),
                        "CORRAL_MODELS__SUM__MAX_QUEUE": "2"})
    loading = post(server, "/v1/models/slow-load/predict", {"word": "a"})
    # It loads for 5 s; only a very slow start could miss the window.
    assert loading.status_code == 503, loading.text
    assert loading.json()["type"] == "model-loading" and loading.headers["Retry-After"]
    server.wait_ready(60, "/readyz")
    # Occupy the replica, then overfill the queue of 2.
    busy = threading.Thread(target=post, args=(server, "/v1/models/sum/predict",
                                               {"values": [41], "delay": 3}))
    busy.start()
    computing(record, 41)
    with ThreadPoolExecutor(6) as pool:
        bodies = [{"values": [100 + i]} for i in range(6)]
        responses = list(pool.map(lambda b: post(server, "/v1/models/sum/predict", b), bodies))
    statuses = [r.status_code for r in responses]
    assert 503 in statuses and statuses.count(200) >= 1, statuses
    overloaded = next(r for r in responses if r.status_code == 503)
    assert overloaded.json()["type"] == "overloaded" and overloaded.headers["Retry-After"] == "1"
    busy.join(30)
    # A deadline that passes in the queue: 504, and the input is never computed.
    hold = threading.Thread(target=post, args=(server, "/v1/models/sum/predict",
                                               {"values": [42], "delay": 3}))
    hold.start()
    computing(record, 42)
    late = post(server, "/v1/models/sum/predict", {"values": [424242]},
                headers={"X-Request-Timeout": "0.5"})
    hold.join(30)
    assert late.status_code == 504 and late.json()["type"] == "timeout"
    flushed(server, record, 43)
    assert "424242" not in record.read_text()


def test_killing_the_supervisor_leaves_nothing(serve: Serve) -> None:
    server = serve(BASIC, "--workers", "2", env=FAST_LOAD)
    tree = descendants(server.proc.pid)
    assert {p.role for p in tree} >= {"http", "dispatcher", "replica"}
    dispatcher = next(p for p in tree if p.role == "dispatcher")
    run_dir = Path(dispatcher.run_dir)
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)
    wait_until(lambda: not any(alive(p.pid) for p in tree), 30,
               f"every child to exit: {[p for p in tree if alive(p.pid)]}")
    # A killed supervisor cannot clean up; the next server removes what it left.
    assert run_dir.exists()
    serve(str(APPS / "devices.py"))
    assert not run_dir.exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_shutdown_drains_then_leaves_nothing(serve: Serve, tmp_path: Path, sig: int) -> None:
    record = tmp_path / "computed.txt"
    server = serve(BASIC, "--workers", "2", env={**FAST_LOAD, "SUM_RECORD_FILE": str(record)})
    tree = descendants(server.proc.pid)
    dispatcher = next(p for p in tree if p.role == "dispatcher")
    run_dir = Path(dispatcher.run_dir)
    assert (run_dir / "d.f").exists()  # the sockets are there while serving
    result: dict[str, requests.Response] = {}
    inflight = threading.Thread(target=lambda: result.setdefault(
        "r", post(server, "/v1/models/sum/predict", {"values": [9], "delay": 2})))
    inflight.start()
    computing(record, 9)
    os.killpg(server.proc.pid, sig)  # as a terminal does: the whole process group
    assert server.proc.wait(60) == 0
    inflight.join(30)
    assert result["r"].status_code == 200 and result["r"].json()["total"] == 9  # drained
    assert not any(alive(p.pid) for p in tree)
    assert not run_dir.exists()  # no socket file, no plan left behind


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text, 0 if absent."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        sample, value = line.rsplit(" ", 1)
        sample_name, _, rest = sample.partition("{")
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if sample_name == name and got == want:
            return float(value)
    return 0.0


def test_metrics_count_exactly_across_http_workers(serve: Serve) -> None:
    server = serve(BASIC, "--workers", "3", env=FAST_LOAD)
    before = requests.get(server.url + "/metrics", timeout=10).text
    n = 24
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(
            lambda i: post(server, "/v1/models/sum/predict", {"values": [i], "delay": 0.05}),
            range(n)))
    assert all(r.status_code == 200 for r in responses)
    assert post(server, "/v1/models/sum/predict", {"values": "x"}).status_code == 422
    after = requests.get(server.url + "/metrics", timeout=10).text
    ok = dict(model="sum", version="1", status="200")
    assert metric(after, "corral_requests_total", **ok) - metric(before, "corral_requests_total",
                                                                 **ok) == n
    bad = dict(model="sum", version="1", status="422")
    assert metric(after, "corral_requests_total", **bad) - metric(before, "corral_requests_total",
                                                                  **bad) == 1
    # Batches: every input went through predict, in fewer calls than requests.
    inputs = metric(after, "corral_batch_size_sum", model="sum") - metric(
        before, "corral_batch_size_sum", model="sum")
    calls = metric(after, "corral_batch_size_count", model="sum") - metric(
        before, "corral_batch_size_count", model="sum")
    assert inputs == n and 0 < calls <= n
    assert metric(after, "corral_predict_duration_seconds_count", model="sum") >= calls
    assert metric(after, "corral_queue_wait_seconds_count", model="sum") >= n
    assert metric(after, "corral_request_duration_seconds_count", model="sum", version="1") >= n
    assert metric(after, "corral_model_load_seconds", model="sum") >= 0
    assert "corral_queue_depth" in after
    # A killed replica is counted as a restart once its replacement starts.
    (replica,) = model_procs(server, "replica", "echo")[:1]
    os.kill(replica.pid, signal.SIGKILL)

    def restarted() -> bool:
        text = requests.get(server.url + "/metrics", timeout=10).text
        return metric(text, "corral_replica_restarts_total", model="echo") >= 1

    wait_until(restarted, 30, "the restart to be counted")


def test_each_replica_sees_only_its_device(serve: Serve) -> None:
    # SPT_NOENV: process titles must not overwrite the environment /proc shows below.
    server = serve(str(APPS / "devices.py"), env={"CUDA_VISIBLE_DEVICES": "0,1",
                                                  "SPT_NOENV": "1"})
    seen: dict[int, dict[str, Any]] = {}

    def both_replicas_answered() -> bool:
        # Two requests at once keep both replicas busy, so both answer sooner or later.
        with ThreadPoolExecutor(2) as pool:
            for r in pool.map(lambda _: post(server, "/v1/models/device/predict",
                                             {"word": "x"}), range(2)):
                seen[r.json()["pid"]] = r.json()
        return len(seen) == 2

    wait_until(both_replicas_answered, 60, "answers from both replicas")
    placements = sorted((p["cuda_visible_devices"], p["hip_visible_devices"], p["device"])
                        for p in seen.values())
    assert placements == [("0", "0", "cuda"), ("1", "1", "cuda")]
    cpu = post(server, "/v1/models/cpu-device/predict", {"word": "x"}).json()
    assert (cpu["cuda_visible_devices"], cpu["device"]) == ("", "cpu")
    # The HTTP workers keep the server's own environment.
    assert all(Path(f"/proc/{p.pid}/environ").read_bytes().count(b"CUDA_VISIBLE_DEVICES=0,1")
               for p in http_workers(server))
    # Inputs cross to the replica as the client's fields (aliases), not Python names.
    span = post(server, "/v1/models/span/predict", [{"from": 2, "to": 7}])
    assert span.status_code == 200 and span.json() == [{"length": 5}]


def test_a_request_whose_client_left_is_not_computed(serve: Serve, tmp_path: Path) -> None:
    """gthread workers watch the client's connection while its request waits."""
    import socket as sockets

    record = tmp_path / "computed.txt"
    server = serve(BASIC, env={**FAST_LOAD, "SUM_RECORD_FILE": str(record)})
    before = requests.get(server.url + "/metrics", timeout=10).text
    busy = threading.Thread(target=post, args=(server, "/v1/models/sum/predict",
                                               {"values": [0], "delay": 3}))
    busy.start()
    time.sleep(0.5)
    body = json.dumps({"values": [515151]}).encode()
    with sockets.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(b"POST /v1/models/sum/predict HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        time.sleep(0.5)  # queued behind the busy replica
    busy.join(30)
    flushed(server, record, 1)
    assert "515151" not in record.read_text()

    def counted() -> bool:
        after = requests.get(server.url + "/metrics", timeout=10).text
        labels = dict(model="sum", version="1", status="499")
        return (metric(after, "corral_requests_total", **labels)
                - metric(before, "corral_requests_total", **labels)) == 1

    wait_until(counted, 10, "the abandoned request to be counted as 499")


def test_gunicorn_that_cannot_start_stops_the_server(tmp_path: Path) -> None:
    import socket as sockets
    import subprocess
    import sys

    from tests.conftest import ROOT

    with sockets.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "corral", "serve", BASIC, "--port", str(port)],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": str(ROOT), **FAST_LOAD})
    assert proc.returncode != 0
    assert "Gunicorn" in proc.stderr and "stopping" in proc.stderr


def test_a_failed_model_stays_failed_when_its_dispatcher_restarts(serve: Serve) -> None:
    server = serve(BASIC, env=FAST_LOAD)

    def state() -> str:
        info = requests.get(server.url + "/v1/models/broken-load", timeout=10).json()
        return str(info["versions"][0]["state"])

    wait_until(lambda: state() == "failed", 60, "broken-load to be failed")
    (dispatcher,) = dispatchers(server)
    os.kill(dispatcher.pid, signal.SIGKILL)
    wait_until(lambda: [p.pid for p in dispatchers(server)] not in ([], [dispatcher.pid]), 30,
               "a new dispatcher")
    wait_until(lambda: state() != "loading", 30, "the new dispatcher to answer")
    assert state() == "failed"
    resp = post(server, "/v1/models/broken-load/predict", {"word": "a"})
    assert resp.status_code == 503 and resp.json()["type"] == "model-failed"
    ready = requests.get(server.url + "/readyz", timeout=10)
    assert ready.status_code == 503  # a failed model: not ready, by default
    assert {m["name"]: m["state"] for m in ready.json()["models"]}["broken-load"] == "failed"


def test_a_hung_replica_is_killed_and_replaced(serve: Serve) -> None:
    server = serve(BASIC, env={**FAST_LOAD, "CORRAL_MODELS__SUM__TIMEOUT": "1",
                               "CORRAL_STALL_GRACE": "1"})
    (replica,) = model_procs(server, "replica", "sum")
    hung = post(server, "/v1/models/sum/predict", {"values": [1], "delay": 10})
    assert hung.status_code == 504
    wait_until(lambda: not alive(replica.pid), 20, "the hung replica to be killed")
    wait_until(lambda: post(server, "/v1/models/sum/predict", {"values": [2]}).status_code == 200,
               30, "the replacement to serve")
    assert "still in predict()" in server.log()
