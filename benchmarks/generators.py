"""Is ``corral bench``'s load generator the bottleneck? ``python benchmarks/generators.py``

Runs wrk and the built-in generator (closed loop, same connections and duration,
alternating order round by round) against two servers on this machine:

* nginx answering a fixed JSON body: the generators' own ceilings (nginx costs next to
  nothing per request);
* ``corral serve benchmarks/corral_app.py`` with the no-op model: what a user measures.

and prints a Markdown table: requests/s, p50/p99 and the generator's CPU, with the
built-in generator's throughput as a ratio of wrk's in the same round. Every process it
starts is stopped; only 127.0.0.1 is contacted.

    python benchmarks/generators.py [--duration 10] [--rounds 3] [--connections 64]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from corral.bench.generators import Level, run_level
from corral.bench.target import LocalServer, ModelTarget, fetch, free_port

BENCH = Path(__file__).resolve().parent
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
BODY = b'{"text": "corral"}'


def start_nginx(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    (workdir / "nginx.conf").write_text(f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {workdir}/body;
  server {{
    listen 127.0.0.1:{port};
    location / {{ default_type application/json; return 200 '{{"length": 6}}'; }}
  }}
}}
""")
    proc = subprocess.Popen([NGINX, "-c", str(workdir / "nginx.conf"), "-p", str(workdir)],
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if fetch(url + "/", timeout=1)[0] == 200:
                return proc, url
        except Exception:  # noqa: BLE001 (not up yet)
            time.sleep(0.1)
    raise RuntimeError("nginx did not start")


def measure(url: str, generator: str, connections: int, duration: float) -> dict[str, Any]:
    model = ModelTarget("noop", "1", {}, 32, 1024, 30.0)
    run_level(generator, url, model, [BODY], Level(concurrency=connections), 2, 30, 256)
    return run_level(generator, url, model, [BODY], Level(concurrency=connections),
                     duration, 30, 256)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=64)
    args = p.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="corral-generators-"))
    nginx, nginx_url = start_nginx(workdir)
    os.environ.update(BENCH_MODELS="noop", BENCH_BATCH_DIR=str(workdir),
                      PYTHONPATH=f"{BENCH}:{BENCH.parent}")
    corral = LocalServer(str(BENCH / "corral_app.py"), [], 300)
    rows = []
    try:
        for target, url in (("nginx (fixed body)", nginx_url), ("corral no-op", corral.url)):
            for rnd in range(args.rounds):
                order = ["wrk", "builtin"] if rnd % 2 == 0 else ["builtin", "wrk"]
                found = {g: measure(url, g, args.connections, args.duration) for g in order}
                for g in ("wrk", "builtin"):
                    r = found[g]
                    rows.append((target, rnd, g, r["rps"], r["latency_ms"]["p50"],
                                 r["latency_ms"]["p99"], r["generator_cores"], r["errors"],
                                 found["builtin"]["rps"] / found["wrk"]["rps"]))
                    print(f"{target} r{rnd} {g}: {r['rps']:,.0f} req/s, p99 "
                          f"{r['latency_ms']['p99']:.1f} ms, {r['generator_cores']:.2f} cores",
                          file=sys.stderr, flush=True)
    finally:
        corral.stop()
        nginx.terminate()
        nginx.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"| target | round | generator | req/s | p50 ms | p99 ms | generator cores | errors "
          f"| built-in / wrk |\n|---|---|---|---|---|---|---|---|---|")
    for target, rnd, g, rps, p50, p99, cores, errors, ratio in rows:
        print(f"| {target} | {rnd} | {g} | {rps:,.0f} | {p50:.1f} | {p99:.1f} | {cores:.2f} | "
              f"{errors} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
