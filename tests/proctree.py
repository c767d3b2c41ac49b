"""Looking at a `corral serve` process tree from the outside, through /proc."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    argv: tuple[str, ...]

    @property
    def title(self) -> str:
        return " ".join(self.argv)

    @property
    def role(self) -> str:
        """From the process title: ``supervisor``, ``dispatcher``, ``replica``, ``http``
        (the Gunicorn master), ``worker`` (an HTTP worker) or ``other``."""
        if self.title.startswith("corral: "):
            return self.title.split()[1]
        if self.title.startswith("gunicorn: master"):
            return "http"
        if self.title.startswith("gunicorn: worker"):
            return "worker"
        return "other"

    @property
    def run_dir(self) -> str:
        """The runtime directory of the instance (Corral's own processes)."""
        return self.title.rsplit("[", 1)[1].rstrip("]")

    @property
    def model(self) -> str:
        """A replica's model version, ``name:version``."""
        return self.title.split()[2]


def _read(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None  # a zombie has exited
    return Proc(pid, int(fields[1]), tuple(a.decode() for a in argv if a))


def descendants(root: int) -> list[Proc]:
    """Every live process below ``root``."""
    procs = [p for p in (_read(int(d)) for d in os.listdir("/proc") if d.isdigit()) if p]
    found, frontier = [], {root}
    while frontier:
        kids = [p for p in procs if p.ppid in frontier]
        found += kids
        frontier = {p.pid for p in kids}
    return found


def alive(pid: int) -> bool:
    return _read(pid) is not None


def wait_until(check: object, timeout: float, what: str) -> None:
    """Poll ``check()`` until it is true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
