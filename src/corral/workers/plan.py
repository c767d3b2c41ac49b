"""Plan: what every process of one `corral serve` instance needs to know.

The supervisor writes it as JSON into the instance's private runtime directory;
the Gunicorn master, dispatchers and replicas each read it at start. It carries
the app to import, the settings, and each model's socket addresses.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ..config import Settings
from ..registry.spec import ModelKey


RUN_DIR_PREFIX = "corral-run-"


def _sweep(base: str) -> None:
    """Remove this user's runtime directories whose supervisor no longer exists."""
    for path in Path(base).glob(f"{RUN_DIR_PREFIX}*"):
        try:
            if path.stat().st_uid != os.getuid():
                continue
            pid = int((path / "supervisor.pid").read_text())
        except (OSError, ValueError):
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass


class ModelEndpoints(BaseModel):
    """Where one model version's dispatcher listens, and where its pid is kept."""

    name: str
    version: str
    frontend: str  # HTTP workers connect here
    backend: str  # replicas connect here
    pid_file: str

    @property
    def key(self) -> ModelKey:
        return ModelKey(self.name, self.version)


class Plan(BaseModel):
    target: str
    settings: dict[str, Any]
    run_dir: str
    models: list[ModelEndpoints]

    @classmethod
    def create(cls, target: str, settings: Settings, keys: list[ModelKey]) -> Plan:
        """A fresh private runtime directory (mode 0700, short path) and the plan for it.

        Directories left by supervisors that were killed outright are removed first.
        """
        base = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
        _sweep(base)
        run_dir = tempfile.mkdtemp(prefix=RUN_DIR_PREFIX, dir=base)
        os.chmod(run_dir, 0o700)
        Path(run_dir, "supervisor.pid").write_text(str(os.getpid()))
        data = settings.model_dump(mode="json")
        models = [
            ModelEndpoints(
                name=k.name, version=k.version,
                frontend=f"ipc://{run_dir}/{i}.f", backend=f"ipc://{run_dir}/{i}.b",
                pid_file=f"{run_dir}/{i}.pid",
            )
            for i, k in enumerate(keys)
        ]
        longest = max((len(m.backend) for m in models), default=0)
        if longest > 100:  # the kernel's limit for a socket path is 107 bytes
            raise RuntimeError(f"runtime directory path too long for ipc sockets: {run_dir}")
        return cls(target=target, settings=data, run_dir=run_dir, models=models)

    @property
    def path(self) -> Path:
        return Path(self.run_dir) / "plan.json"

    def save(self) -> Path:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.model_dump_json())
        return self.path

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        return cls.model_validate(json.loads(Path(path).read_text()))

    def build_settings(self) -> Settings:
        return Settings(**self.settings)

    def endpoints(self, key: ModelKey) -> ModelEndpoints:
        for m in self.models:
            if m.key == key:
                return m
        raise KeyError(key)
