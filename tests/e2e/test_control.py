"""The process tree at run time: its control channel, one dispatcher for many models, a
runtime directory that other processes find, and the failures around the dispatcher."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from collections.abc import Iterator
from typing import Any, Callable

import pytest
import requests

from corral.config import Settings
from corral.discover import load_server
from corral.errors import InvalidInput, ModelNotFound
from corral.process.client import DispatcherEngine
from corral.process.runtime import Runtime
from corral.registry.spec import ModelKey
from tests.conftest import APPS, CORRAL, ROOT, ServerProcess, settled
from tests.e2e.test_workers import (
    BASIC,
    FAST_LOAD,
    computing,
    dispatchers,
    metric,
    model_procs,
    post,
)
from tests.proctree import alive, descendants, wait_until

pytestmark = pytest.mark.slow

Serve = Callable[..., ServerProcess]
SUM = ModelKey("sum", "1")


@pytest.fixture
def control() -> Iterator[Callable[[Path], DispatcherEngine]]:
    """A DispatcherEngine on the runtime directory of a running server, stopped afterwards."""
    engines: list[DispatcherEngine] = []

    def connect(run_dir: Path) -> DispatcherEngine:
        engines.append(DispatcherEngine(Runtime.find(run_dir)))
        return engines[-1]

    yield connect
    for engine in engines:
        engine.stop()


def version_info(server: ServerProcess, name: str) -> dict[str, Any]:
    info = requests.get(f"{server.url}/v1/models/{name}", timeout=10).json()
    return info["versions"][0]  # type: ignore[no-any-return]


def test_replicas_are_added_removed_unloaded_and_loaded_at_run_time(
        serve: Serve, control: Callable[[Path], DispatcherEngine], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    record = tmp_path / "computed.txt"
    server = serve(BASIC, "--runtime-dir", str(run_dir),
                   env={**FAST_LOAD, "SUM_RECORD_FILE": str(record)})
    # A process the supervisor did not start finds the tree through the named directory.
    engine = control(run_dir)

    engine.set_replicas(SUM, 3)
    wait_until(lambda: len(model_procs(server, "replica", "sum")) == 3
               and version_info(server, "sum")["replicas_ready"] == 3, 60, "three sum replicas")
    assert version_info(server, "sum")["replicas"] == 3
    with ThreadPoolExecutor(3) as pool:  # each starts once the one before computes
        futures = []
        for i in range(3):
            futures.append(pool.submit(post, server, "/v1/models/sum/predict",
                                       {"values": [81 + i], "delay": 2}))
            computing(record, 81 + i)
        answers = [f.result() for f in futures]
    assert [a.status_code for a in answers] == [200] * 3
    assert {a.json()["pid"] for a in answers} == {p.pid for p in
                                                 model_procs(server, "replica", "sum")}

    # Scaling down while requests flow fails none of them.
    stop = threading.Event()
    statuses: list[int] = []

    def traffic() -> None:
        while not stop.is_set():
            statuses.append(post(server, "/v1/models/sum/predict",
                                 {"values": [1], "delay": 0.2}).status_code)

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1)
    engine.set_replicas(SUM, 1)
    wait_until(lambda: len(model_procs(server, "replica", "sum")) == 1, 60, "two to stop")
    time.sleep(1)
    stop.set()
    for t in threads:
        t.join(30)
    assert statuses and set(statuses) == {200}, statuses

    # Unloaded: no replica process, a clear 503, and the other models still ready.
    engine.unload(SUM)
    wait_until(lambda: not model_procs(server, "replica", "sum"), 60, "the sum replica to stop")
    assert version_info(server, "sum")["state"] == "unloaded"
    refused = post(server, "/v1/models/sum/predict", {"values": [1]})
    assert refused.status_code == 503 and refused.json()["type"] == "model-unloaded"
    assert "Retry-After" not in refused.headers
    assert post(server, "/v1/models/echo/predict", {"word": "ok"}).status_code == 200

    engine.load(SUM)
    wait_until(lambda: post(server, "/v1/models/sum/predict", {"values": [5]}).status_code == 200,
               60, "sum to serve again")
    assert version_info(server, "sum")["replicas"] == 1

    with pytest.raises(ModelNotFound):
        engine.set_replicas(ModelKey("nope", "1"), 1)
    with pytest.raises(InvalidInput):
        engine.set_replicas(SUM, 1000)


def test_loading_a_failed_model_tries_again(serve: Serve, control: Callable[[Path], DispatcherEngine],
                                            tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    server = serve(BASIC, "--runtime-dir", str(run_dir), env=FAST_LOAD)
    wait_until(lambda: version_info(server, "broken-load")["state"] == "failed", 60,
               "broken-load to fail")
    attempts = server.log().count("broken-load:1 replica 0: load() raised")
    control(run_dir).load(ModelKey("broken-load", "1"))
    wait_until(lambda: server.log().count("broken-load:1 replica 0: load() raised") > attempts,
               60, "a new load attempt")
    wait_until(lambda: version_info(server, "broken-load")["state"] == "failed", 60,
               "broken-load to fail again")


def test_a_stuck_or_crashing_model_does_not_stall_another(serve: Serve, tmp_path: Path) -> None:
    record = tmp_path / "computed.txt"
    server = serve(BASIC, env={**FAST_LOAD, "SUM_RECORD_FILE": str(record)})
    assert len(dispatchers(server)) == 1  # one dispatcher holds every model's queue
    # sum's only replica is stuck in a 10 s predict, with more sum requests queued behind it.
    stuck = [threading.Thread(target=post, args=(server, "/v1/models/sum/predict",
                                                 {"values": [71 + i], "delay": 10}))
             for i in range(3)]
    stuck[0].start()
    computing(record, 71)
    for t in stuck[1:]:
        t.start()
    for _ in range(20):  # echo answers meanwhile, well before the stuck predict ends
        resp = requests.post(server.url + "/v1/models/echo/predict", json={"word": "ok"},
                             timeout=5)
        assert resp.status_code == 200
    # sum's replica crashes again and again; echo keeps answering.
    for _ in range(3):
        (replica,) = model_procs(server, "replica", "sum")
        os.kill(replica.pid, signal.SIGKILL)
        resp = requests.post(server.url + "/v1/models/echo/predict", json={"word": "ok"},
                             timeout=5)
        assert resp.status_code == 200
        wait_until(lambda: [p.pid for p in model_procs(server, "replica", "sum")]
                   not in ([], [replica.pid]), 30, "a new sum replica")
    for t in stuck:
        t.join(60)


def test_a_wsgi_app_started_apart_uses_the_models_process_tree(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    log = tmp_path / "models.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), **FAST_LOAD}
    with log.open("wb") as out:
        proc = subprocess.Popen([*CORRAL, "models", BASIC, "--runtime-dir", str(run_dir)],
                                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        app = None

        def tree_ready() -> bool:
            nonlocal app
            if proc.poll() is not None:
                raise AssertionError(log.read_text())
            try:
                app = app or load_server(BASIC).create_app(Settings(runtime_dir=str(run_dir)))
            except Exception:
                return False
            return settled(app.test_client().get("/readyz").json)  # type: ignore[arg-type]

        wait_until(tree_ready, 60, "the models to load")
        assert app is not None
        assert not any(p.role == "http" for p in descendants(proc.pid))  # no Gunicorn
        resp = app.test_client().post("/v1/models/sum/predict", json={"values": [1, 2]})
        assert resp.status_code == 200 and resp.json["total"] == 3  # type: ignore[index]
        replicas = {p.pid for p in descendants(proc.pid)
                    if p.role == "replica" and p.model == "sum:1"}
        assert resp.json["pid"] in replicas and resp.json["pid"] != os.getpid()  # type: ignore[index]
    finally:
        if app is not None:
            app.extensions["corral.engine"].stop()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert not run_dir.exists()


def test_a_runtime_directory_in_use_is_refused(serve: Serve, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    serve(BASIC, "--runtime-dir", str(run_dir), env=FAST_LOAD)
    second = subprocess.run([*CORRAL, "serve", BASIC, "--port", "0", "--runtime-dir",
                             str(run_dir)], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert second.returncode != 0 and "belongs to a running Corral server" in second.stderr


# -- the dispatcher's failures, as clients see them -----------------------------------


def test_a_killed_dispatchers_queue_leaves_the_metrics(serve: Serve, tmp_path: Path) -> None:
    record = tmp_path / "computed.txt"
    server = serve(BASIC, env={**FAST_LOAD, "SUM_RECORD_FILE": str(record)})
    busy = threading.Thread(target=post, args=(server, "/v1/models/sum/predict",
                                               {"values": [61], "delay": 5}))
    busy.start()
    computing(record, 61)
    queued = [threading.Thread(target=post, args=(server, "/v1/models/sum/predict",
                                                  {"values": [62 + i]})) for i in range(3)]
    for t in queued:
        t.start()

    def depth() -> float:
        return metric(requests.get(server.url + "/metrics", timeout=10).text,
                      "corral_queue_depth", model="sum")

    wait_until(lambda: depth() == 3, 20, "three queued inputs in the metrics")
    (dispatcher,) = dispatchers(server)
    os.kill(dispatcher.pid, signal.SIGKILL)
    for t in [busy, *queued]:
        t.join(30)
    wait_until(lambda: post(server, "/v1/models/sum/predict", {"values": [1]}).status_code == 200,
               60, "sum to serve again")
    wait_until(lambda: depth() == 0, 20, "the dead dispatcher's queue to leave the metrics")


def test_a_dispatcher_restarted_before_its_model_loaded_says_loading(serve: Serve,
                                                                    tmp_path: Path) -> None:
    gate = tmp_path / "loaded"
    server = serve(BASIC, ready_path="/healthz", env={"SLOW_LOAD_GATE": str(gate)})
    wait_until(lambda: post(server, "/v1/models/sum/predict", {"values": [1]}).status_code == 200,
               60, "sum to load")
    (dispatcher,) = dispatchers(server)
    os.kill(dispatcher.pid, signal.SIGKILL)
    wait_until(lambda: post(server, "/v1/models/sum/predict", {"values": [1]}).status_code == 200,
               60, "the new dispatcher to serve")
    # slow-load never loaded: the new dispatcher refuses at once rather than queueing.
    resp = requests.post(server.url + "/v1/models/slow-load/predict", json={"word": "a"},
                         timeout=10)
    assert resp.status_code == 503 and resp.json()["type"] == "model-loading"
    gate.touch()
    server.wait_ready(60, "/readyz")
    assert post(server, "/v1/models/slow-load/predict", {"word": "a"}).status_code == 200


def test_an_unreachable_dispatcher_of_a_loaded_model_is_not_called_loading(
        serve: Serve) -> None:
    server = serve(BASIC, env=FAST_LOAD)
    (dispatcher,) = dispatchers(server)
    os.kill(server.proc.pid, signal.SIGSTOP)  # the supervisor cannot restart it meanwhile
    try:
        os.kill(dispatcher.pid, signal.SIGKILL)
        wait_until(lambda: not alive(dispatcher.pid), 10, "the dispatcher to die")
        resp = post(server, "/v1/models/sum/predict", {"values": [1]}, timeout=10)
        assert resp.status_code == 503, resp.text
        assert resp.json()["type"] == "overloaded" and resp.headers["Retry-After"]
        assert "not taking requests" in resp.json()["detail"]
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    wait_until(lambda: post(server, "/v1/models/sum/predict", {"values": [1]}).status_code == 200,
               60, "sum to serve again")


def test_model_states_are_answered_without_asking_the_dispatcher(serve: Serve) -> None:
    server = serve(BASIC, env=FAST_LOAD)
    (dispatcher,) = dispatchers(server)
    os.kill(dispatcher.pid, signal.SIGSTOP)
    try:
        models = requests.get(server.url + "/v1/models", timeout=2)
        ready = requests.get(server.url + "/readyz", timeout=2)
    finally:
        os.kill(dispatcher.pid, signal.SIGCONT)
    assert models.status_code == 200 and ready.status_code == 503  # broken-load failed
    assert settled(ready.json())
    states = {m["name"]: m["versions"][0]["state"] for m in models.json()["models"]}
    assert states["sum"] == "ready" and states["broken-load"] == "failed"


# -- found in review: each failed before its fix ----------------------------------------


def test_scaling_down_then_up_at_once_fails_no_request(
        serve: Serve, control: Callable[[Path], DispatcherEngine], tmp_path: Path) -> None:
    run_dir, record = tmp_path / "run", tmp_path / "computed.txt"
    server = serve(BASIC, "--runtime-dir", str(run_dir),
                   env={**FAST_LOAD, "SUM_RECORD_FILE": str(record)})
    engine = control(run_dir)
    engine.set_replicas(SUM, 2)
    wait_until(lambda: version_info(server, "sum")["replicas_ready"] == 2, 60, "two replicas")
    with ThreadPoolExecutor(2) as pool:  # both replicas busy for 3 s
        futures = []
        for value in (91, 92):
            futures.append(pool.submit(post, server, "/v1/models/sum/predict",
                                       {"values": [value], "delay": 3}))
            computing(record, value)
        engine.set_replicas(SUM, 1)  # slot 1 leaves after its batch...
        engine.set_replicas(SUM, 2)  # ...and is wanted again before it has left
        answers = [f.result() for f in futures]
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    wait_until(lambda: version_info(server, "sum")["replicas_ready"] == 2
               and len(model_procs(server, "replica", "sum")) == 2, 60,
               "slot 1 to be served again by one process")
    for i in range(6):
        assert post(server, "/v1/models/sum/predict", {"values": [i]}).status_code == 200
    assert "was replaced" not in server.log()


def test_a_busy_replica_found_by_a_new_dispatcher_is_watched(serve: Serve,
                                                             tmp_path: Path) -> None:
    record = tmp_path / "computed.txt"
    server = serve(BASIC, env={**FAST_LOAD, "SUM_RECORD_FILE": str(record)})
    (replica,) = model_procs(server, "replica", "sum")
    first = threading.Thread(target=post, args=(server, "/v1/models/sum/predict",
                                                {"values": [95], "delay": 3}))
    first.start()
    computing(record, 95)
    (dispatcher,) = dispatchers(server)
    os.kill(dispatcher.pid, signal.SIGKILL)  # the replica is busy: it says Done, not Hello
    wait_until(lambda: [p.pid for p in dispatchers(server)] not in ([], [dispatcher.pid]), 30,
               "a new dispatcher")
    first.join(30)
    result: dict[str, requests.Response] = {}
    second = threading.Thread(target=lambda: result.setdefault("r", post(
        server, "/v1/models/sum/predict", {"values": [96], "delay": 8})))
    second.start()
    computing(record, 96)
    killed_at = time.monotonic()
    os.kill(replica.pid, signal.SIGKILL)
    second.join(30)
    assert result["r"].status_code == 502, result["r"].text  # seen at once, not a 504 later
    assert time.monotonic() - killed_at < 5


def test_a_model_whose_replica_dies_while_loading_is_marked_failed(serve: Serve) -> None:
    server = serve(str(APPS / "dying.py"), ready_path="/healthz")
    wait_until(lambda: version_info(server, "dying-load")["state"] == "failed", 90,
               "the model to be marked failed after three deaths")
    resp = post(server, "/v1/models/dying-load/predict", {"word": "a"})
    assert resp.status_code == 503 and resp.json()["type"] == "model-failed"
    assert post(server, "/v1/models/echo/predict", {"word": "a"}).status_code == 200
