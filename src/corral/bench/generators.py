"""The two load generators behind one call: :func:`run_level` measures one model at one
level (a concurrency or a rate) with wrk or the built-in generator and returns the
client's half of a run (see results.py)."""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import loadgen
from .loadgen import LoadSpec, parse_result, spec_json
from .results import client_run, describe_level, summarize_latencies
from .target import GeneratorError, ModelTarget
from .wrk import run_wrk, wrk_script

# Called about five times a second with (requests answered, requests failed) so far.
Progress = Callable[[int, int], None]

# Open loop: the rate counts as kept when at least this share of the requests due went
# out in time, and 99% of them went out within LAG_LIMIT of when they were due, or
# before the next one was half due at low rates (a 15 ms lag at 8/s delays nothing).
KEPT_SHARE = 0.99
LAG_LIMIT = 0.010


@dataclass(frozen=True)
class Level:
    """A concurrency (closed loop) or a rate in requests per second (open loop)."""

    concurrency: int = 0
    rate: float = 0.0

    @property
    def mode(self) -> str:
        return "open" if self.rate else "closed"

    @property
    def label(self) -> str:
        return describe_level(self.concurrency, self.rate)


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_level(generator: str, base_url: str, model: ModelTarget, bodies: list[bytes],
              level: Level, duration: float, timeout: float, max_connections: int,
              progress: Progress | None = None) -> dict[str, Any]:
    """One measured run, with the CPU the generator used (its process's, during the run)."""
    cpu0, t0 = children_cpu(), time.monotonic()
    if generator == "wrk":
        run = _wrk(base_url, model, bodies, level, duration, timeout)
        wall = time.monotonic() - t0
        run["generator_cores"] = round((children_cpu() - cpu0) / wall, 3) if wall else None
    else:
        run = _builtin(base_url, model, bodies, level, duration, timeout, max_connections,
                       progress)
    run.update(model=model.name, mode=level.mode,
               concurrency=level.concurrency or None, rate=level.rate or None)
    return run


def _wrk(base_url: str, model: ModelTarget, bodies: list[bytes], level: Level,
         duration: float, timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="corral-wrk-") as tmp:
        script = Path(tmp) / "bench.lua"
        prefix = urlsplit(base_url).path.rstrip("/")
        script.write_text(wrk_script(model.name, prefix + model.predict_path, bodies))
        threads = min(level.concurrency, 2)
        w = run_wrk(script, base_url, level.concurrency, duration, threads, timeout)
    lat = w["latency_us"]
    pcts = [[float(p), us / 1000] for p, us in lat["percentiles"]]
    by_p = dict((p, ms) for p, ms in pcts)
    latency = {"mean": lat["mean"] / 1000, "p50": by_p[50.0], "p90": by_p[90.0],
               "p99": by_p[99.0], "p999": by_p[99.9], "max": lat["max"] / 1000}
    # wrk's "status" error is its count of answers >= 400, already in statuses.
    return client_run(sum(w["statuses"].values()), w["duration_us"] / 1e6, latency, pcts,
                      w["statuses"], {k: n for k, n in w["errors"].items() if k != "status"})


def _builtin(base_url: str, model: ModelTarget, bodies: list[bytes], level: Level,
             duration: float, timeout: float, max_connections: int,
             progress: Progress | None) -> dict[str, Any]:
    url = urlsplit(base_url)
    if url.scheme != "http" or not url.hostname:
        raise GeneratorError(f"The built-in generator speaks plain HTTP: {base_url} is not "
                             "http://HOST[:PORT][/PREFIX] (wrk takes https:// URLs).")
    spec = LoadSpec(host=url.hostname, port=url.port or 80,
                    path=url.path.rstrip("/") + model.predict_path,
                    bodies=[b.decode() for b in bodies], duration=duration,
                    concurrency=level.concurrency, rate=level.rate,
                    max_connections=max_connections, timeout=timeout)
    # Run as a script, not as part of the package: it imports nothing of Corral's.
    proc = subprocess.Popen([sys.executable, loadgen.__file__],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    errors: list[str] = []
    stderr = proc.stderr

    def read_progress() -> None:
        for line in stderr:
            parts = line.split()
            if len(parts) == 3 and parts[0] == "P" and progress is not None:
                progress(int(parts[1]), int(parts[2]))
            elif not line.startswith("P "):
                errors.append(line)

    try:
        proc.stdin.write(spec_json(spec))
        proc.stdin.close()
        reader = threading.Thread(target=read_progress, daemon=True)
        reader.start()
        raw = proc.stdout.read()
        proc.wait()
        reader.join(5)
    finally:
        if proc.poll() is None:  # interrupted: the generator stops with us
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise GeneratorError("The built-in load generator failed: "
                             + "".join(errors[-20:]).strip())
    r = parse_result(raw)
    # Requests that never got an answer count in the percentiles with the time until
    # the generator gave up on them (open loop), not as if they had never been due.
    latency, pcts = summarize_latencies(r.latencies + r.unanswered)
    run = client_run(len(r.latencies), r.elapsed, latency, pcts, r.statuses, r.socket_errors)
    run["generator_cores"] = round(r.cpu_s / r.elapsed, 3) if r.elapsed else None
    run["reopened"] = r.reopened
    if level.rate:
        lag = sorted(r.send_lag)
        lag_p99 = lag[min(len(lag) - 1, int(len(lag) * 0.99))] if lag else 0.0
        run["sent_rate"] = r.sent_in_time / duration
        run["sent_share"] = r.sent_in_time / r.scheduled if r.scheduled else 0.0
        run["unanswered"] = len(r.unanswered)
        run["send_lag_p99_ms"] = lag_p99 * 1000
        run["kept_rate"] = (r.sent_in_time >= KEPT_SHARE * r.scheduled
                            and lag_p99 <= max(LAG_LIMIT, 0.5 / level.rate))
        run["connections"] = r.connections
    return run
