"""Memory of a server by the number of models it declares: ``python benchmarks/models_memory.py``.

Writes an app with N no-op models (each its own class, one replica each), starts
``corral serve`` on it with one HTTP worker, waits until /readyz is 200 and every
replica is up, lets it settle, then sums the PSS of every process of the tree by
role (from /proc/PID/smaps_rollup). Prints one Markdown table row per N.

    python benchmarks/models_memory.py            # N = 1 and 20
    python benchmarks/models_memory.py 1 5 50
    CORRAL_PLACEMENT=inline python benchmarks/models_memory.py   # placement = "inline"

Only 127.0.0.1 is contacted; the server is stopped with SIGTERM (SIGKILL to its
process group after 60 s).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

APP_HEAD = '''
import os

import corral
from pydantic import BaseModel

PLACEMENT = os.environ.get("CORRAL_PLACEMENT", "process")


class Text(BaseModel):
    text: str


class Length(BaseModel):
    length: int

'''

APP_MODEL = '''
class Noop{i}Model(corral.Model):
    name = "noop-{i}"
    placement = PLACEMENT

    def predict(self, batch: list[Text]) -> list[Length]:
        return [Length(length=len(x.text)) for x in batch]

'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                parents[int(d)] = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1]
                                      .split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = [root], {root}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier}
        found += frontier
    return found


def pss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def role(pid: int, root: int) -> str:
    """From the process title (or, for servers before titles, the command line)."""
    title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    argv = title.split()
    if pid == root:
        return "supervisor"
    if title.startswith("corral: "):
        return argv[1]
    if title.startswith("gunicorn: master"):
        return "http"
    for module in ("corral.process", "corral.workers"):
        if module in argv:
            return argv[argv.index(module) + 1]
    return "http worker"


def measure(n: int, settle: float = 3.0) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory(prefix="corral-mem-") as tmp:
        app = Path(tmp) / "many.py"
        app.write_text(APP_HEAD + "".join(APP_MODEL.format(i=i) for i in range(n)))
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "corral", "serve", str(app), "--port",
                                 str(port), "--workers", "1", "--log-level", "warning"],
                                cwd=tmp, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2):
                        break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise SystemExit(f"server with {n} models did not become ready")
                    time.sleep(0.2)
            time.sleep(settle)
            by_role: dict[str, list[float]] = defaultdict(list)
            for pid in children(proc.pid):
                try:
                    by_role[role(pid, proc.pid)].append(pss_mib(pid))
                except OSError:
                    pass
            return by_role
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def main() -> None:
    counts = [int(a) for a in sys.argv[1:]] or [1, 20]
    print("| models | PSS MiB, whole server | by role: count × mean MiB |")
    print("|---:|---:|---|")
    for n in counts:
        by_role = measure(n)
        total = sum(sum(v) for v in by_role.values())
        detail = ", ".join(f"{r} {len(v)}× {sum(v) / len(v):.0f}"
                           for r, v in sorted(by_role.items()))
        print(f"| {n} | {total:.0f} | {detail} |", flush=True)


if __name__ == "__main__":
    main()
