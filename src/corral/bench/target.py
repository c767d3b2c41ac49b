"""What a load test aims at: the models of a running Corral server (read from its
``/v1/models``), or of an app file, which :class:`LocalServer` starts with
``corral serve`` for the length of the test and stops afterwards."""

from __future__ import annotations

import ctypes
import ctypes.util
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import StartupError

HOST = "127.0.0.1"


class TargetError(StartupError):
    """The target cannot be load-tested: down, not Corral, or no such model."""


class GeneratorError(StartupError):
    """The load generator could not run or gave no result."""


@dataclass(frozen=True)
class ModelTarget:
    """One model (its default version) as a load test sees it."""

    name: str
    version: str
    input_schema: dict[str, Any]
    max_size: int
    max_queue: int
    timeout: float
    # The input class, when the model was read from an app file (not from a URL).
    input_type: Any = field(default=None, compare=False, repr=False)

    @property
    def predict_path(self) -> str:
        return f"/v1/models/{self.name}/predict"

    @property
    def jobs_path(self) -> str:
        return f"/v1/models/{self.name}/jobs"


def is_url(target: str) -> bool:
    return target.startswith(("http://", "https://"))


def fetch(url: str, timeout: float = 10.0, body: bytes | None = None) -> tuple[int, bytes]:
    """GET ``url``, or POST a JSON ``body`` to it: (status, body). Raises
    :class:`TargetError` when nothing answers."""
    req = urllib.request.Request(url, data=body,
                                 headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (http only)
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TargetError(f"Nothing answers at {url}: {reason}. Is the server running "
                          "there? (corral serve APP)") from None
    except (http.client.HTTPException, ValueError) as exc:
        raise TargetError(f"{url} is not a URL Corral can reach: {exc}.") from None


def describe_url(base: str) -> list[ModelTarget]:
    """The models a running Corral server at ``base`` serves, with their input schemas."""
    base = base.rstrip("/")
    try:
        return _describe_url(base)
    except (AttributeError, TypeError, ValueError, KeyError):
        raise TargetError(f"{base} answers /v1/models, but not as a Corral server does "
                          "(its models, versions or batching are not what Corral "
                          "sends).") from None


def _describe_url(base: str) -> list[ModelTarget]:
    status, raw = fetch(base + "/v1/models")
    listing = _json(raw)
    if status != 200 or not isinstance(listing, dict) or not isinstance(
            listing.get("models"), list):
        raise TargetError(f"{base} is not a Corral server: GET /v1/models answered {status} "
                          f"{_snippet(raw)}.")
    out = []
    for model in listing["models"]:
        name = model.get("name") if isinstance(model, dict) else None
        if not isinstance(name, str):
            raise TargetError(f"{base}/v1/models does not list models as Corral does.")
        status, raw = fetch(f"{base}/v1/models/{name}")
        detail = _json(raw)
        if status != 200 or not isinstance(detail, dict):
            raise TargetError(f"GET {base}/v1/models/{name} answered {status} {_snippet(raw)}.")
        default = detail.get("default_version")
        version = next((v for v in detail.get("versions", []) if v.get("version") == default),
                       None)
        if version is None or not isinstance(version.get("input_schema"), dict):
            raise TargetError(f"GET {base}/v1/models/{name} shows no input schema for its "
                              "default version.")
        batching = version.get("batching", {})
        out.append(ModelTarget(name, str(default), version["input_schema"],
                               int(batching.get("max_size", 1)),
                               int(batching.get("max_queue", 1)),
                               float(batching.get("timeout", 30))))
    return out


def describe_app(app: str) -> list[ModelTarget]:
    """The models of an app file (imported here, not started)."""
    from ..config import Settings
    from ..discover import load_server

    settings = Settings()
    catalog = load_server(app).catalog(settings)
    out = []
    for name in catalog.names():
        spec = catalog.resolve(name)
        b = spec.batching
        out.append(ModelTarget(name, spec.version, spec.input_type.model_json_schema(),
                               b.max_size, b.max_queue, b.timeout, spec.input_type))
    return out


def pick(models: list[ModelTarget], names: list[str]) -> list[ModelTarget]:
    """The models named (all when none are), or a TargetError naming the known ones."""
    if not names:
        return models
    known = {m.name: m for m in models}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise TargetError(f"No model {', '.join(map(repr, unknown))}; known: "
                          f"{', '.join(sorted(known)) or 'none'}.")
    return [known[n] for n in names]


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _snippet(raw: bytes) -> str:
    text = raw[:120].decode("utf-8", "replace").replace("\n", " ").strip()
    return repr(text) if text else "(empty body)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class LocalServer:
    """``corral serve APP`` on a free loopback port, for the length of a load test.

    Its runtime and job data live in a temporary directory, removed by :meth:`stop`;
    its log is kept there until then and quoted when it fails to start.
    """

    def __init__(self, app: str, serve_args: list[str], start_timeout: float) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self._dir = tempfile.TemporaryDirectory(prefix="corral-bench-")
        self.log_path = Path(self._dir.name) / "serve.log"
        env = dict(os.environ, CORRAL_DATA_DIR=str(Path(self._dir.name) / "data"))
        argv = [sys.executable, "-m", "corral", "serve", app, "--host", HOST,
                "--port", str(self.port), "--runtime-dir", str(Path(self._dir.name) / "run"),
                *serve_args]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=_stop_with_parent)  # noqa: PLW1509
        try:
            self._wait_ready(start_timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TargetError(f"corral serve {self.app} exited with {self.proc.returncode} "
                                  f"while starting:\n{self.log_tail()}")
            try:
                status, raw = fetch(self.url + "/readyz", timeout=5)
            except TargetError:
                status, raw = 0, b""
            if status == 200:
                return
            self._check_failed(raw)
            time.sleep(0.2)
        raise TargetError(f"corral serve {self.app} was not ready after {timeout:g} s:\n"
                          f"{self.log_tail()}")

    def _check_failed(self, raw: bytes) -> None:
        """Once no model is loading any more, a failed one ends the wait, named."""
        report = _json(raw)
        if not isinstance(report, dict) or not isinstance(report.get("models"), list):
            return
        states = [(m.get("name"), m.get("state"), m.get("error")) for m in report["models"]]
        failed = [f"{name}: {error}" for name, state, error in states if state == "failed"]
        if failed and not any(state == "loading" for _, state, _ in states):
            raise TargetError(f"corral serve {self.app}: a model failed to load, so the "
                              f"server is not ready: {'; '.join(failed)}. (Set "
                              "CORRAL_READY_WITH_FAILED_MODELS=true to test the others.)")

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def pids(self) -> list[int]:
        """Every live process of the server's tree (the supervisor and below)."""
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                fields = _stat(int(entry))
                if fields:
                    children.setdefault(int(fields[1]), []).append(int(entry))
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the server's live processes so far."""
        ticks = 0
        for pid in self.pids():
            fields = _stat(pid)
            if fields:
                ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 30 s) and remove its files, with
        signals held meanwhile: a second Ctrl-C must not leave it half stopped."""
        with signals_held():
            self._stop()

    def _stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._dir.cleanup()


@contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP ignored for the block, in the main thread (elsewhere
    signals cannot be set, and are not delivered anyway)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    before = {sig: signal.signal(sig, signal.SIG_IGN) for sig in held}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _stop_with_parent() -> None:
    """In the server's process, before it runs: SIGTERM (a clean stop) when the process
    that started it dies, even by SIGKILL, so no server outlives its load test."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


PR_SET_PDEATHSIG = 1


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name ([1] is the parent pid)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2:].split()
