"""`corral serve` for real: Gunicorn (gthread and gevent), the dev server, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import pytest
import requests

from tests.conftest import APPS, CORRAL, ROOT, ServerProcess, free_port
from tests.proctree import descendants, wait_until

pytestmark = pytest.mark.slow

QUICKSTART = str(ROOT / "examples" / "quickstart.py")
BASIC = str(APPS / "basic.py")
FLOWER = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
Serve = Callable[..., ServerProcess]


def post(server: ServerProcess, path: str, body: Any, **kw: Any) -> requests.Response:
    return requests.post(server.url + path, json=body, timeout=30, **kw)


@pytest.mark.parametrize("worker_class", ["gthread", "gevent"])
def test_quickstart_serves_both_models(serve: Serve, worker_class: str) -> None:
    server = serve(QUICKSTART, "--worker-class", worker_class)
    resp = post(server, "/v1/models/iris/predict", FLOWER)
    assert resp.status_code == 200 and resp.json()["species"] == "setosa"
    virginica = {"sepal_length": 7.7, "sepal_width": 3.0, "petal_length": 6.1, "petal_width": 2.3}
    resp = post(server, "/v1/models/iris/predict", [FLOWER, virginica])
    assert [r["species"] for r in resp.json()] == ["setosa", "virginica"]
    resp = post(server, "/v1/models/text-stats/predict", {"text": "Hello big World"})
    assert resp.json() == {"characters": 15, "words": 3, "uppercase_ratio": 0.1538}
    names = [m["name"] for m in requests.get(server.url + "/v1/models", timeout=5).json()["models"]]
    assert names == ["iris", "text-stats"]
    assert f"Using worker: {worker_class}" in server.log()


@pytest.mark.parametrize("worker_class", ["gthread", "gevent"])
def test_requests_from_many_clients_share_batches(serve: Serve, worker_class: str) -> None:
    server = serve(BASIC, "--worker-class", worker_class, env={"SLOW_LOAD_SECONDS": "0"})
    body = {"values": [1, 2], "delay": 0.2}
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda _: post(server, "/v1/models/sum/predict", body),
                                  range(16)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert all(r.json()["total"] == 3 for r in responses)
    sizes = [r.json()["batch_size"] for r in responses]
    assert max(sizes) > 1, sizes
    assert max(sizes) <= 8  # the model's max_size


def test_in_process_models_under_gevent_do_not_block_the_hub(tmp_path: Path) -> None:
    """corral.wsgi:application under plain Gunicorn with gevent workers: the models run in
    the worker itself, and a CPU-bound predict runs on an OS thread, not on the hub."""
    port = free_port()
    log = tmp_path / "gunicorn.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CORRAL_APP": BASIC, "SLOW_LOAD_SECONDS": "0"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--worker-class", "gevent", "--workers", "1",
             "--bind", f"127.0.0.1:{port}", "corral.wsgi:application"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = ServerProcess(proc, port, log)
    try:
        server.wait_ready(60, "/readyz")
        finished: dict[str, float] = {}

        def slow() -> None:
            resp = post(server, "/v1/models/sum/predict", {"values": [1], "spin": 3.0})
            finished["predict"] = time.monotonic()
            finished["pid"] = resp.json()["pid"]

        thread = threading.Thread(target=slow)
        thread.start()
        # Wait until predict spins (its batch is counted), then ask for health.
        wait_until(lambda: "corral_batch_size_count{model=\"sum\"} 1.0"
                   in requests.get(server.url + "/metrics", timeout=10).text, 10,
                   "predict to start")
        assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
        finished["healthz"] = time.monotonic()
        thread.join(30)
        # The health check was answered while predict still spun, in the same process.
        assert finished["healthz"] < finished["predict"]
        assert "pid" in finished, "the predict request failed"
        workers = [p for p in descendants(proc.pid)]
        assert [p.pid for p in workers] == [finished["pid"]]  # computed in the HTTP worker
    finally:
        server.stop()


def test_poison_input_isolated_under_gunicorn(serve: Serve) -> None:
    server = serve(BASIC, env={"SLOW_LOAD_SECONDS": "0"})
    bodies = [{"values": [0], "delay": 0.5}] + [{"values": [i]} for i in range(1, 4)]
    bodies[2]["poison"] = True
    with ThreadPoolExecutor(4) as pool:
        futures = []
        for b in bodies:
            futures.append(pool.submit(post, server, "/v1/models/sum/predict", b))
            time.sleep(0.05)
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200, 200, 500, 200]
    problem = responses[2].json()
    assert problem["type"] == "model-error" and problem["error_id"]
    assert "secret" not in responses[2].text
    # The traceback is in the server log, under the same id.
    assert problem["error_id"] in server.log() and "secret internal detail" in server.log()


def test_loading_failed_and_ready_states(serve: Serve, tmp_path: Path) -> None:
    gate = tmp_path / "loaded"
    server = serve(BASIC, ready_path="/healthz", env={"SLOW_LOAD_GATE": str(gate)})
    resp = post(server, "/v1/models/slow-load/predict", {"word": "a"})
    assert resp.status_code == 503, resp.text  # load() waits for the gate file
    assert resp.json()["type"] == "model-loading" and "Retry-After" in resp.headers
    assert requests.get(server.url + "/readyz", timeout=5).status_code == 503
    gate.touch()
    server.wait_ready(60, "/readyz")
    readiness = requests.get(server.url + "/readyz", timeout=5).json()
    states = {m["name"]: m["state"] for m in readiness["models"]}
    assert states["broken-load"] == "failed" and states["slow-load"] == "ready"
    failed = post(server, "/v1/models/broken-load/predict", {"word": "a"})
    assert failed.status_code == 503 and failed.json()["type"] == "model-failed"


def curl(*args: str) -> tuple[int, str]:
    out = subprocess.run(["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", *args],
                         capture_output=True, text=True, timeout=60)
    body, _, code = out.stdout.rpartition("\n")
    return int(code or 0), body


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
@pytest.mark.parametrize("chunked", [False, True])
def test_curl_receives_413_for_oversized_body(serve: Serve, tmp_path: Path,
                                              chunked: bool) -> None:
    server = serve(QUICKSTART)
    big = tmp_path / "big.json"
    big.write_bytes(b'{"text": "' + b"a" * (11 * 1024 * 1024) + b'"}')
    extra = ["-H", "Transfer-Encoding: chunked"] if chunked else []
    code, body = curl(server.url + "/v1/models/text-stats/predict", "-H",
                      "Content-Type: application/json", *extra, "--data-binary", f"@{big}")
    assert code == 413, body
    assert json.loads(body)["type"] == "payload-too-large"
    # The server is still fine afterwards.
    assert post(server, "/v1/models/text-stats/predict", {"text": "ok"}).status_code == 200


def test_requests_gunicorn_refuses_are_problems_too(serve: Serve) -> None:
    server = serve(QUICKSTART)
    long_path = requests.get(server.url + "/v1/models/" + "a" * 5000, timeout=10)
    assert long_path.status_code == 414
    assert long_path.headers["Content-Type"] == "application/problem+json"
    assert long_path.json()["status"] == 414
    bad_header = requests.get(server.url + "/healthz", headers={"X-Big": "x" * 10000}, timeout=10)
    assert bad_header.status_code in (400, 431)
    assert bad_header.json()["type"] == "about:blank"


def test_module_attr_target_and_sigterm_exits_zero(serve: Serve) -> None:
    server = serve("tests.apps.basic:app", env={"SLOW_LOAD_SECONDS": "0"})
    assert post(server, "/v1/models/echo/predict", {"word": "ab"}).json() == {"upper": "BA"}
    assert server.stop() == 0


def test_dev_server(serve: Serve) -> None:
    server = serve(QUICKSTART, "--dev")
    assert post(server, "/v1/models/iris/predict", FLOWER).json()["species"] == "setosa"
    assert "gunicorn" not in server.log().lower()


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CORRAL, *args], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})


def test_bad_model_file_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    app = tmp_path / "scalar.py"
    app.write_text(
        "import corral\n"
        "from pydantic import BaseModel\n"
        "class Out(BaseModel):\n    y: int\n"
        "class ScalarModel(corral.Model):\n"
        "    def predict(self, batch: list[int]) -> list[Out]:\n        return []\n"
    )
    result = run_cli("serve", str(app), "--port", "1", cwd=tmp_path)
    assert result.returncode != 0
    assert "Wrap the value in a field" in result.stderr
    assert "Traceback" not in result.stderr
    missing = run_cli("serve", "no_such_module", cwd=tmp_path)
    assert missing.returncode != 0 and "No module named 'no_such_module'" in missing.stderr
    broken = tmp_path / "broken.py"
    broken.write_text("import corral\nclass M(corral.Model)\n    pass\n")
    result = run_cli("serve", str(broken), cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "SyntaxError" in result.stderr and "line 2" in result.stderr


def test_heavy_imports_in_the_app_file_are_warned_about(serve: Serve, tmp_path: Path) -> None:
    app = tmp_path / "heavy.py"
    app.write_text(
        "import sys, types\n"
        "sys.modules.setdefault('jax', types.ModuleType('jax'))  # as if app.py imported jax\n"
        "from tests.fixtures import EchoV1Model\n"
    )
    server = serve(f"{app}:EchoV1Model")  # the path.py:attr form
    assert post(server, "/v1/models/echo/predict", {"word": "a"}).status_code == 200
    assert "imported jax" in server.log()


def test_openapi_command_prints_the_document(tmp_path: Path) -> None:
    result = run_cli("openapi", QUICKSTART, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["openapi"] == "3.1.0"
    assert {"/v1/models/iris/predict", "/v1/models/text-stats/predict"} <= set(doc["paths"])
    assert list(tmp_path.iterdir()) == []  # nothing written to the working directory


def test_serve_help_lists_every_setting(tmp_path: Path) -> None:
    result = run_cli("serve", "--help", cwd=tmp_path)
    assert result.returncode == 0
    from corral.config import ModelOverrides, Settings

    for name in Settings.model_fields:
        assert f"CORRAL_{name.upper()}" in result.stdout
    for name in ModelOverrides.model_fields:
        assert f"CORRAL_MODELS__<NAME>__{name.upper()}" in result.stdout
    assert "[default: 32" in result.stdout  # threads



def test_failed_inputs_of_an_array_are_named_in_process_mode_too(serve: Serve) -> None:
    server = serve(BASIC, env={"SLOW_LOAD_SECONDS": "0"})
    body = [{"values": [1]}, {"values": [2], "poison": True}, {"values": [3]}]
    whole = post(server, "/v1/models/sum/predict", body)
    assert whole.status_code == 500 and whole.json()["item"] == 1
    per_item = post(server, "/v1/models/sum-items/predict", body)
    assert per_item.status_code == 200
    first, poisoned, last = per_item.json()
    assert (first["total"], last["total"]) == (1, 3)
    assert poisoned["type"] == "model-error" and poisoned["item"] == 1
    assert poisoned["error_id"] in server.log()
    info = requests.get(server.url + "/v1/models/broken-load", timeout=10).json()
    error = info["versions"][0]["error"]
    assert error.startswith("load() raised OSError: weights file missing: /secret/path")
    assert "Traceback" not in error


def test_dev_reload_restarts_the_models_when_the_app_changes(serve: Serve,
                                                             tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    source = (ROOT / "tests" / "apps" / "reloadable.py").read_text()
    app.write_text(source.replace("GREETING", "one"))
    server = serve(str(app), "--dev", "--reload")
    assert post(server, "/v1/models/greeter/predict", {"word": "x"}).json() == {"upper": "one"}
    time.sleep(1.1)  # a new modification time, whatever the file system's resolution
    app.write_text(source.replace("GREETING", "two"))

    def reloaded() -> bool:
        try:
            return post(server, "/v1/models/greeter/predict", {"word": "x"}).json() == {
                "upper": "two"}
        except (requests.RequestException, ValueError):
            return False  # between the old server and the new one

    wait_until(reloaded, 30, "the server to reload the changed app")
    refused = run_cli("serve", str(app), "--reload", cwd=tmp_path)
    assert refused.returncode != 0 and "--reload is for development" in refused.stderr


def test_a_server_whose_every_model_failed_can_exit(tmp_path: Path) -> None:
    app = tmp_path / "broken.py"
    app.write_text("import corral\nfrom tests.fixtures import BrokenLoadModel\n"
                   "app = corral.Server([BrokenLoadModel])\n")
    proc = subprocess.run([*CORRAL, "serve", str(app), "--port", str(free_port())],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT),
                               "CORRAL_EXIT_WHEN_ALL_FAILED": "1"})
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "every model failed to load" in proc.stderr
