"""`corral serve` as operators run it: Gunicorn's signals, worker and replica recycling,
process titles."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from tests.conftest import ServerProcess
from tests.e2e.test_workers import BASIC, FAST_LOAD, http_workers, model_procs, post
from tests.proctree import descendants, wait_until

pytestmark = pytest.mark.slow

Serve = Callable[..., ServerProcess]


class Traffic:
    """Requests on fresh connections from a few threads until stopped; every status kept."""

    def __init__(self, server: ServerProcess, threads: int = 4,
                 body: dict[str, object] | None = None) -> None:
        self.server, self.body = server, body or {"values": [1], "delay": 0.05}
        self.statuses: list[int | str] = []
        self.pids: set[int] = set()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                resp = requests.post(self.server.url + "/v1/models/sum/predict", json=self.body,
                                     timeout=30, headers={"Connection": "close"})
                self.statuses.append(resp.status_code)
                if resp.status_code == 200:
                    self.pids.add(resp.json()["pid"])
            except requests.RequestException as exc:
                self.statuses.append(type(exc).__name__)

    def stop(self) -> list[int | str]:
        self._stop.set()
        for t in self._threads:
            t.join(60)
        return self.statuses


def test_sighup_replaces_the_http_workers_dropping_no_request(serve: Serve) -> None:
    server = serve(BASIC, "--workers", "2", env=FAST_LOAD)
    wait_until(lambda: len(http_workers(server)) == 2, 30, "two HTTP workers")
    before = {p.pid for p in http_workers(server)}
    traffic = Traffic(server)
    time.sleep(1)
    os.kill(server.proc.pid, signal.SIGHUP)  # to the supervisor, as to Gunicorn's master
    wait_until(lambda: len(http_workers(server)) == 2
               and not before & {p.pid for p in http_workers(server)}, 60,
               "both HTTP workers to be replaced")
    time.sleep(1)
    statuses = traffic.stop()
    assert len(statuses) > 20 and set(statuses) == {200}, statuses
    assert server.proc.poll() is None  # the server is still up


def test_ttin_and_ttou_add_and_remove_http_workers(serve: Serve) -> None:
    server = serve(BASIC, "--workers", "2", env=FAST_LOAD)
    wait_until(lambda: len(http_workers(server)) == 2, 30, "two HTTP workers")
    os.kill(server.proc.pid, signal.SIGTTIN)
    wait_until(lambda: len(http_workers(server)) == 3, 30, "a third HTTP worker")
    os.kill(server.proc.pid, signal.SIGTTOU)
    wait_until(lambda: len(http_workers(server)) == 2, 60, "back to two")
    assert post(server, "/v1/models/sum/predict", {"values": [2]}).json()["total"] == 2


def test_recycling_http_workers_and_replicas_drops_no_request(serve: Serve) -> None:
    server = serve(BASIC, "--workers", "2", "--max-requests", "10",
                   env={**FAST_LOAD, "CORRAL_MODELS__SUM__MAX_REQUESTS": "8"})
    wait_until(lambda: len(http_workers(server)) == 2, 30, "two HTTP workers")
    workers_before = {p.pid for p in http_workers(server)}
    (replica,) = model_procs(server, "replica", "sum")
    traffic = Traffic(server)
    wait_until(lambda: len(traffic.pids) >= 3
               and not workers_before & {p.pid for p in http_workers(server)}, 90,
               "the replica to be recycled twice and both HTTP workers once")
    statuses = traffic.stop()
    assert set(statuses) == {200}, statuses
    assert replica.pid in traffic.pids
    assert "recycled" in server.log()


def test_processes_carry_readable_titles(serve: Serve) -> None:
    server = serve(BASIC, env=FAST_LOAD)
    titles = [" ".join(p.argv) for p in descendants(server.proc.pid)]
    run_dir = next(t for t in titles if t.startswith("corral: dispatcher")).split("[")[1]
    assert Path(f"/proc/{server.proc.pid}/cmdline").read_bytes().startswith(
        b"corral: supervisor [")
    assert f"corral: replica sum:1 #0 [{run_dir}" in titles
    assert any(t.startswith("gunicorn: master [corral]") for t in titles)
    assert any(t.startswith("gunicorn: worker [corral]") for t in titles)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_request_log_and_request_ids_reach_the_models_own_log(serve: Serve, fmt: str) -> None:
    server = serve(BASIC, env={**FAST_LOAD, "CORRAL_ACCESS_LOG": "1", "CORRAL_LOG_FORMAT": fmt})
    resp = requests.post(server.url + "/v1/models/sum/predict", json={"values": [4]},
                         headers={"X-Request-ID": "req-abc.123"}, timeout=30)
    assert resp.status_code == 200 and resp.headers["X-Request-ID"] == "req-abc.123"
    made = requests.post(server.url + "/v1/models/sum/predict", json={"values": "x"},
                         headers={"X-Request-ID": "bad id with spaces"}, timeout=30)
    assert made.status_code == 422 and len(made.headers["X-Request-ID"]) == 32  # a new one

    def logged() -> bool:
        return "req-abc.123" in server.log() and made.headers["X-Request-ID"] in server.log()

    wait_until(logged, 10, "the request log lines")
    lines = [line for line in server.log().splitlines() if "req-abc.123" in line]
    if fmt == "text":
        access = next(line for line in lines if "corral.access" in line)
        assert '"POST /v1/models/sum/predict" 200' in access and "model=sum:1" in access
        assert "batch=1" in access and "corral.access: 127.0.0.1 " in access
        model_line = next(line for line in lines if "sum model computing" in line)
        assert model_line.endswith("[request req-abc.123]")
    else:
        import json

        docs = [json.loads(line) for line in lines]
        access = next(d for d in docs if d["logger"] == "corral.access")
        assert (access["status"], access["model"], access["batch"], access["client"]) == (
            200, "sum:1", 1, "127.0.0.1")
        model_doc = next(d for d in docs if d["message"] == "sum model computing 1 inputs")
        assert model_doc["request_ids"] == ["req-abc.123"] and model_doc["logger"] == "tests.sum"


def _pss_kib(pid: int, fields: tuple[str, ...] = ("Pss:",)) -> int:
    return sum(int(line.split()[1])
               for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
               if line.startswith(fields))


def test_admin_api_over_http_unloads_freeing_memory_and_scales(serve: Serve) -> None:
    server = serve(str(Path(BASIC).parent / "echo_only.py"),
                   env={**FAST_LOAD, "CORRAL_ADMIN_TOKEN": "t0ken"})
    auth = {"Authorization": "Bearer t0ken"}
    assert requests.post(server.url + "/v1/models/sum/unload", timeout=10).status_code == 401
    (replica,) = model_procs(server, "replica", "sum")
    # What the replica holds alone (it shares what the zygote imported with the zygote).
    replica_own = _pss_kib(replica.pid, ("Private_Clean:", "Private_Dirty:"))
    before = sum(_pss_kib(p.pid) for p in descendants(server.proc.pid))
    resp = requests.post(server.url + "/v1/models/sum/unload", headers=auth, timeout=10)
    assert resp.status_code == 202 and resp.json()["state"] == "unloaded"
    wait_until(lambda: not model_procs(server, "replica", "sum"), 30, "the replica to exit")
    after = sum(_pss_kib(p.pid) for p in descendants(server.proc.pid))
    assert before - after > replica_own // 2, (before, after, replica_own)  # its memory is freed

    resp = requests.put(server.url + "/v1/models/sum/replicas", json={"replicas": 3},
                        headers=auth, timeout=10)
    assert resp.status_code == 202 and resp.json()["replicas"] == 3
    traffic = Traffic(server)
    wait_until(lambda: len(model_procs(server, "replica", "sum")) == 3 and len(traffic.pids) >= 2,
               60, "three replicas, answering")
    statuses = traffic.stop()
    # Requests sent while the model was coming back were refused as loading; none failed.
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[-1] == 200
    for bad in (b"{", b'{"replicas": -1}', b'{"replicas": "3"}', b"[]"):
        answer = requests.put(server.url + "/v1/models/sum/replicas", data=bad, headers={
            **auth, "Content-Type": "application/json"}, timeout=10)
        assert answer.status_code in (400, 422) and answer.headers["Content-Type"].startswith(
            "application/problem+json")
