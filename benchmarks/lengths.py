"""Length-aware batching against FIFO batching, MiniLM on texts of mixed length, same run.

    python benchmarks/lengths.py [--rounds 3] [--duration 20] [--connections 64]

Writes 256 texts of 5 to 200 words (uniformly at random, fixed seed, common English
words of one word piece each) to a JSONL file, starts ``corral serve
benchmarks/lengths_app.py --workers 2`` (one MiniLM replica of 2 torch threads per
model), and drives each model in turn with ``corral bench URL -m MODEL --payloads
FILE`` (wrk, closed loop) for --duration seconds per model and round, alternating which
goes first. Prints one markdown table: per round and model, inputs/s, p50 and p99 and
the mean batch; and the throughput ratio sized / fifo per round.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("the a of and to in is it that was for on are with as his they be at one have "
         "this from by hot word but what some we can out other were all there when up use "
         "your how said an each she which do their time if will way about many then them "
         "write would like so these her long make thing see him two has look more day "
         "could go come did number sound no most people my over know water than call "
         "first who may down side been now find").split()


def texts(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 200))) for _ in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"corral serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                if json.load(r).get("ready"):
                    return
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit("server not ready in time")


def bench(url: str, model: str, payloads: Path, conns: int, duration: float,
          out: Path) -> dict[str, float]:
    subprocess.run([sys.executable, "-m", "corral", "bench", url, "-m", model, "--payloads",
                    str(payloads), "-c", str(conns), "-d", f"{duration}s", "--warmup", "5s",
                    "--generator", "wrk", "-q", "--json", str(out)], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    (run,) = json.loads(out.read_text())["runs"]
    server = run.get("server") or {}
    return {"rps": run["rps"], "p50": run["latency_ms"]["p50"],
            "p99": run["latency_ms"]["p99"], "errors": run["errors"],
            "batch": server.get("batch_mean") or float("nan")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=20)
    p.add_argument("--connections", type=int, default=64)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="corral-lengths-"))
    payloads = work / "texts.jsonl"
    payloads.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts(256)))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, EMBEDDINGS_THREADS="2", OMP_NUM_THREADS="2", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(ROOT), CORRAL_DATA_DIR=str(work / "data"))
    with (work / "serve.log").open("wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "corral", "serve",
                                   str(ROOT / "benchmarks" / "lengths_app.py"), "--port",
                                   str(port), "--workers", "2"], env=env, cwd=work,
                                  stdout=log, stderr=subprocess.STDOUT)
    rows = []
    try:
        wait_ready(url, server)
        for rnd in range(args.rounds):
            order = ("fifo", "sized") if rnd % 2 == 0 else ("sized", "fifo")
            got = {m: bench(url, m, payloads, args.connections, args.duration,
                            work / f"{m}-{rnd}.json") for m in order}
            rows.append(got)
            print(f"round {rnd}: " + ", ".join(f"{m} {r['rps']:.1f}/s" for m, r in got.items()),
                  file=sys.stderr)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    print(f"| round | model | inputs/s | p50 ms | p99 ms | errors | mean batch |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for rnd, got in enumerate(rows):
        for m in ("fifo", "sized"):
            r = got[m]
            print(f"| {rnd} | {m} | {r['rps']:.1f} | {r['p50']:.0f} | {r['p99']:.0f} | "
                  f"{r['errors']:.0f} | {r['batch']:.1f} |")
    ratios = [got["sized"]["rps"] / got["fifo"]["rps"] for got in rows]
    print(f"\nsized / fifo throughput: median {statistics.median(ratios):.2f} "
          f"(rounds {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
