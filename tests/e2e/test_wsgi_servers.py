"""Corral's WSGI app under the servers users deploy with, for real: plain Gunicorn,
uWSGI, Waitress and Tornado's WSGI container; models in-process, or in the process tree
of a separately started `corral models`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.conftest import APPS, CORRAL, ROOT, ServerProcess, free_port
from tests.proctree import descendants, wait_until

pytestmark = pytest.mark.slow

APP = str(APPS / "echo_only.py")
BIN = Path(sys.executable).parent


def command(server: str, port: int) -> list[str]:
    bind = f"127.0.0.1:{port}"
    return {
        "gunicorn": [sys.executable, "-m", "gunicorn", "--workers", "2", "--threads", "8",
                     "--bind", bind, "corral.wsgi:application"],
        "uwsgi": [str(BIN / "uwsgi"), "--http", bind, "--module", "corral.wsgi:application",
                  "--master", "--processes", "2", "--enable-threads", "--threads", "8",
                  "--lazy-apps", "--die-on-term", "--need-app", "--virtualenv", sys.prefix],
        "waitress": [str(BIN / "waitress-serve"), f"--listen={bind}", "--threads=16",
                     "corral.wsgi:application"],
        "tornado": [sys.executable, str(APPS / "tornado_server.py"), str(port)],
    }[server]


def start(server: str, tmp_path: Path, env: dict[str, str]) -> ServerProcess:
    port = free_port()
    log = tmp_path / f"{server}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command(server, port), cwd=tmp_path, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT), "CORRAL_APP": APP,
                                     **env})
    return ServerProcess(proc, port, log)


def exercise(server: ServerProcess) -> set[int]:
    """Requests at once to the batched model; the pids that computed them."""
    server.wait_ready(90, "/readyz")
    echo = requests.post(server.url + "/v1/models/echo/predict", json={"word": "wsgi"},
                         timeout=30)
    assert echo.status_code == 200 and echo.json() == {"upper": "WSGI"}, echo.text
    bad = requests.post(server.url + "/v1/models/echo/predict", json={"word": ""}, timeout=30)
    assert bad.status_code == 422 and bad.json()["type"] == "validation-error"
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: requests.post(
            server.url + "/v1/models/sum/predict", json={"values": [i], "delay": 0.2},
            timeout=30), range(8)))
    assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers]
    return {a.json()["pid"] for a in answers}


@pytest.mark.parametrize("name", ["gunicorn", "uwsgi", "waitress", "tornado"])
def test_models_in_process_under_each_wsgi_server(name: str, tmp_path: Path) -> None:
    server = start(name, tmp_path, {})
    try:
        pids = exercise(server)
        # In-process: the server's own processes computed the requests.
        assert pids <= {server.proc.pid, *(p.pid for p in descendants(server.proc.pid))}
    finally:
        code = server.stop()
    assert code in (0, -signal.SIGTERM, 128 + signal.SIGTERM, 30), server.log()[-3000:]


@pytest.mark.parametrize("name", ["uwsgi", "waitress"])
def test_each_wsgi_server_can_share_one_process_tree(name: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    log = tmp_path / "models.log"
    with log.open("wb") as out:
        models = subprocess.Popen([*CORRAL, "models", APP, "--runtime-dir", str(run_dir)],
                                  cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
    tree = ServerProcess(models, 0, log)
    try:
        wait_until(lambda: (run_dir / "status.json").exists(), 60, "the process tree")
        server = start(name, tmp_path, {"CORRAL_RUNTIME_DIR": str(run_dir)})
        try:
            pids = exercise(server)
        finally:
            server.stop()
        replicas = {p.pid for p in descendants(models.pid) if p.role == "replica"}
        assert pids and pids <= replicas  # one copy of the model, in the tree, for all workers
        assert not pids & {p.pid for p in descendants(server.proc.pid)}
    finally:
        assert tree.stop() == 0
    assert not run_dir.exists()
