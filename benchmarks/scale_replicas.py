"""Throughput of a CPU-bound model as the admin API adds replicas, under load:
``python benchmarks/scale_replicas.py``.

Serves a model whose predict() spins the CPU for 20 ms per input (no batching), with
`CORRAL_ADMIN_TOKEN` set; 8 client threads send requests the whole time; every 10 s the
admin API sets the replica count to the next of 1, 2, 3. Prints requests/s and failed
requests per step, as a Markdown table. On a machine with free cores, throughput
follows the replicas up to the cores; no request fails while replicas are added.

Only 127.0.0.1 is contacted; the server is stopped with SIGTERM.
"""

from __future__ import annotations

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
from pathlib import Path

APP = '''
import time
import corral
from pydantic import BaseModel


class Work(BaseModel):
    n: int = 1


class Done(BaseModel):
    pid: int


class SpinModel(corral.Model):
    """20 ms of pure CPU per input."""

    def predict(self, batch: list[Work]) -> list[Done]:
        import os
        out = []
        for _ in batch:
            until = time.process_time() + 0.02
            while time.process_time() < until:
                pass
            out.append(Done(pid=os.getpid()))
        return out
'''
TOKEN = "bench"
STEP = 10.0


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="corral-scale-") as tmp:
        (Path(tmp) / "spin.py").write_text(APP)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen([sys.executable, "-m", "corral", "serve", "spin.py", "--port",
                                 str(port), "--workers", "2", "--log-level", "warning"], cwd=tmp,
                                env={**os.environ, "CORRAL_ADMIN_TOKEN": TOKEN},
                                start_new_session=True)
        try:
            _wait_ready(url)
            counts: dict[int, list[int]] = {}
            step = [1]
            stop = threading.Event()

            def client() -> None:
                body = json.dumps({"n": 1}).encode()
                while not stop.is_set():
                    req = urllib.request.Request(url + "/v1/models/spin/predict", data=body,
                                                 headers={"Content-Type": "application/json"})
                    ok = 0
                    try:
                        with urllib.request.urlopen(req, timeout=30) as r:
                            ok = r.status == 200
                    except (urllib.error.URLError, OSError):
                        ok = 0
                    counts.setdefault(step[0], [0, 0])[0 if ok else 1] += 1

            threads = [threading.Thread(target=client) for _ in range(8)]
            for t in threads:
                t.start()
            print(f"| replicas | req/s over {STEP:g} s | failed |\n|---:|---:|---:|")
            for replicas in (1, 2, 3):
                if replicas > 1:
                    _set_replicas(url, replicas)
                    time.sleep(2)  # the new replica loads
                step[0] = replicas
                counts[replicas] = [0, 0]
                time.sleep(STEP)
                ok, failed = counts[replicas]
                print(f"| {replicas} | {ok / STEP:.1f} | {failed} |", flush=True)
            stop.set()
            for t in threads:
                t.join(60)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("server not ready")


def _set_replicas(url: str, n: int) -> None:
    req = urllib.request.Request(url + "/v1/models/spin/replicas", method="PUT",
                                 data=json.dumps({"replicas": n}).encode(),
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 202


if __name__ == "__main__":
    main()
