"""Runtime: the private directory of one ``corral serve`` instance, and what lies in it.

Every process of an instance finds the others through this directory (mode 0700,
short enough for the 107-byte limit of a socket path)::

    supervisor.pid    the supervisor's pid: a directory whose supervisor is gone is stale
    plan.json         the app to import and the settings (written once, at start)
    models.json       each declared model version: batching, replicas wanted, replicas
                      that gave up loading (written by the supervisor on every change)
    status.json       each model version's state (written by the dispatcher on change);
                      HTTP workers answer /v1/models and /readyz from it
    d.f, d.b          the dispatcher's sockets: clients (HTTP workers, the supervisor)
                      and replicas
    ctl               the supervisor's control socket (load, unload, set replicas)
    jobs.wake         the embedded jobs process's wake-up socket (a datagram: new job)
    ready/            one file per replica whose load() succeeded, while it lives
    metrics/          Prometheus multiprocess files

By default the directory is made fresh under /tmp; ``--runtime-dir`` (or
``CORRAL_RUNTIME_DIR``) names it instead, so that a process the supervisor did not
start, such as a WSGI app under uWSGI or Waitress, can find the same process tree.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from ..config import Settings
from ..dispatch.status import ModelStatus
from ..errors import StartupError
from ..model import Batching
from ..registry.spec import ModelSpec

RUN_DIR_PREFIX = "corral-run-"


class ModelEntry(BaseModel):
    """One declared model version as the process tree sees it (never its code)."""

    name: str
    version: str
    max_size: int
    max_wait_ms: float
    max_queue: int
    timeout: float
    size_ratio: float = 2.0
    declared_replicas: int
    replicas: int  # wanted now; 0: unloaded
    failed: dict[int, str] = Field(default_factory=dict)  # replica index -> why it gave up

    @property
    def key(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def batching(self) -> Batching:
        return Batching(max_size=self.max_size, max_wait_ms=self.max_wait_ms,
                        max_queue=self.max_queue, timeout=self.timeout,
                        size_ratio=self.size_ratio)

    @classmethod
    def of(cls, spec: ModelSpec) -> ModelEntry:
        b = spec.batching
        return cls(name=spec.name, version=spec.version, max_size=b.max_size,
                   max_wait_ms=b.max_wait_ms, max_queue=b.max_queue, timeout=b.timeout,
                   size_ratio=b.size_ratio,
                   declared_replicas=spec.replicas, replicas=spec.replicas)


def _owner_alive(path: Path) -> bool | None:
    """Whether the supervisor that owns ``path`` runs; None if it is not a runtime directory."""
    try:
        pid = int((path / "supervisor.pid").read_text())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep(base: str) -> None:
    """Remove this user's runtime directories whose supervisor no longer exists."""
    for path in Path(base).glob(f"{RUN_DIR_PREFIX}*"):
        try:
            if path.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        if _owner_alive(path) is False:
            shutil.rmtree(path, ignore_errors=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class Runtime:
    """The runtime directory of one instance, by path."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.frontend = str(self.path / "d.f")  # Unix sockets (see corral.transport.stream)
        self.backend = str(self.path / "d.b")
        self.control = str(self.path / "ctl")
        self.jobs_wake = str(self.path / "jobs.wake")
        self.zygote = self.path / "zygote.sock"
        self.metrics_dir = self.path / "metrics"
        self.status_file = self.path / "status.json"

    # -- creating and finding -----------------------------------------------------------

    @classmethod
    def create(cls, settings: Settings) -> Runtime:
        """The instance's directory, made private and empty, owned by this process.

        Without ``settings.runtime_dir``, a fresh directory under /tmp (directories
        left by supervisors that were killed outright are removed first). A named
        directory is refused while another live supervisor owns it.
        """
        if settings.runtime_dir:
            path = Path(settings.runtime_dir).absolute()
            if _owner_alive(path):
                raise StartupError(f"The runtime directory {path} belongs to a running Corral "
                                   "server; give each instance its own.")
            if path.exists():
                if _owner_alive(path) is None and any(path.iterdir()):
                    raise StartupError(f"{path} is not empty and is not a Corral runtime "
                                       "directory; name a new or empty one.")
                shutil.rmtree(path, ignore_errors=True)
            try:
                path.mkdir(mode=0o700, parents=True)
            except FileExistsError:
                raise StartupError(f"Another Corral server is starting in {path}; give each "
                                   "instance its own runtime directory.") from None
        else:
            base = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
            _sweep(base)
            path = Path(tempfile.mkdtemp(prefix=RUN_DIR_PREFIX, dir=base))
        os.chmod(path, 0o700)
        runtime = cls(path)
        if len(runtime.backend) > 100:  # the kernel's limit for a socket path is 107 bytes
            shutil.rmtree(path, ignore_errors=True)
            raise StartupError(f"The runtime directory path is too long for sockets: {path}; "
                               "use a shorter --runtime-dir.")
        (path / "ready").mkdir(mode=0o700)
        runtime.metrics_dir.mkdir(mode=0o700)
        (path / "supervisor.pid").write_text(str(os.getpid()))
        return runtime

    @classmethod
    def find(cls, path: str | Path) -> Runtime:
        """The runtime directory of a running instance, or StartupError saying what is wrong."""
        runtime = cls(Path(path).absolute())
        alive = _owner_alive(runtime.path)
        if alive is None:
            raise StartupError(f"{runtime.path} is not the runtime directory of a Corral "
                               "server; start one with --runtime-dir there first.")
        if not alive:
            raise StartupError(f"The Corral server of {runtime.path} is no longer running.")
        return runtime

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    # -- plan ---------------------------------------------------------------------------

    def write_plan(self, target: str, settings: Settings) -> None:
        data = settings.model_dump(mode="json")
        if settings.admin_token is not None:  # dumped masked; the workers need the value
            data["admin_token"] = settings.admin_token.get_secret_value()
        _write_atomic(self.path / "plan.json", json.dumps({"target": target, "settings": data}))

    def read_plan(self) -> tuple[str, Settings]:
        data = json.loads((self.path / "plan.json").read_text())
        return str(data["target"]), Settings(**data["settings"])

    # -- models and their state ---------------------------------------------------------

    def write_models(self, models: list[ModelEntry]) -> None:
        _write_atomic(self.path / "models.json",
                      json.dumps([m.model_dump(mode="json") for m in models]))

    def read_models(self) -> list[ModelEntry]:
        data = json.loads((self.path / "models.json").read_text())
        return [ModelEntry.model_validate(m) for m in data]

    def write_status(self, statuses: dict[str, ModelStatus]) -> None:
        _write_atomic(self.status_file, json.dumps({
            key: {"state": s.state, "replicas_ready": s.replicas_ready,
                  "replicas": s.replicas, "error": s.error}
            for key, s in statuses.items()}))

    def read_status(self) -> dict[str, ModelStatus]:
        data: dict[str, Any] = json.loads(self.status_file.read_text())
        return {key: ModelStatus(v["state"], int(v["replicas_ready"]), int(v["replicas"]),
                                 v.get("error")) for key, v in data.items()}

    # -- replicas -----------------------------------------------------------------------

    def ready_marker(self, key: str, index: int) -> Path:
        """Exists while replica ``index`` of ``key`` lives and has loaded."""
        return self.path / "ready" / f"{key}.{index}"

    def load_error_file(self, key: str, index: int) -> Path:
        """What replica ``index`` of ``key`` said when its latest load() failed."""
        return self.path / "ready" / f"{key}.{index}.error"

    def ready_replicas(self, key: str) -> list[int]:
        found = []
        for path in (self.path / "ready").glob(f"{key}.*"):
            index = path.name[len(key) + 1:]
            if index.isdigit():
                found.append(int(index))
        return found
