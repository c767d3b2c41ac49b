"""Shared test helpers: free ports and real `corral serve` processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "tests" / "apps"
CORRAL = [sys.executable, "-m", "corral"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settled(readiness: dict[str, Any]) -> bool:
    """Whether a /readyz body shows every model done loading (ready, failed or unloaded)
    and at least one ready: the test apps include a model whose load() always fails."""
    states = {m["state"] for m in readiness.get("models", [])}
    return "ready" in states and "loading" not in states


@dataclass
class ServerProcess:
    """A running `corral serve` and where to reach it."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0, path: str = "/healthz") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"corral serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                resp = requests.get(self.url + path, timeout=2)
                if resp.status_code == 200 or (path == "/readyz" and settled(resp.json())):
                    return
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready on {path} within {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode


def start_server(directory: Path, app: str, *args: str, env: dict[str, str] | None = None,
                 ready_path: str = "/readyz", timeout: float = 60.0) -> ServerProcess:
    """`corral serve APP ARGS...` on a free port, run in ``directory``, once ready.

    The caller stops it (``ServerProcess.stop``); the ``serve`` fixture does that itself.
    """
    port = free_port()
    log_path = directory / f"serve-{port}.log"
    # Each server keeps its jobs in its own directory's .corral unless the test says.
    inherited = {k: v for k, v in os.environ.items() if k != "CORRAL_DATA_DIR"}
    full_env = {**inherited, "PYTHONPATH": str(ROOT), **(env or {})}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*CORRAL, "serve", app, "--port", str(port), *args],
            cwd=directory, env=full_env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ServerProcess(proc, port, log_path)
    try:
        server.wait_ready(timeout, ready_path)
    except BaseException:
        server.stop()
        raise
    return server


def wait_client_ready(client: Any, timeout: float = 30.0) -> None:
    """In-process (a Flask or Werkzeug test client): until every model is done loading and
    one is ready (see :func:`settled`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if settled(client.get("/readyz").get_json()):
            return
        time.sleep(0.02)
    raise AssertionError(client.get("/readyz").get_json())


@pytest.fixture(autouse=True, scope="session")
def _job_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """In-process apps keep their jobs in a temporary directory, not the working one."""
    old = os.environ.get("CORRAL_DATA_DIR")
    os.environ["CORRAL_DATA_DIR"] = str(tmp_path_factory.mktemp("job-data"))
    yield
    if old is None:
        os.environ.pop("CORRAL_DATA_DIR", None)
    else:
        os.environ["CORRAL_DATA_DIR"] = old


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start `corral serve APP ARGS...` on a free port in a temporary directory."""
    started: list[ServerProcess] = []

    def start(app: str, *args: str, **kw: Any) -> ServerProcess:
        started.append(start_server(tmp_path, app, *args, **kw))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With CORRAL_REQUIRE_ALL=1 (scripts/test installs every part), a skip is a failure."""
    if os.environ.get("CORRAL_REQUIRE_ALL") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped and session.exitstatus == 0:
        reasons = sorted({str(r.longrepr[-1]) if isinstance(r.longrepr, tuple) else str(r.longrepr)
                          for r in skipped})
        print(f"\nCORRAL_REQUIRE_ALL: {len(skipped)} tests skipped, which is a failure here: "
              + "; ".join(reasons))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
