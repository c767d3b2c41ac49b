"""Jobs with the MiniLM model: throughput through each backend, batch sizes, live p99.

    python benchmarks/jobs.py [--quick] [--json out.json]

1. Throughput, for each backend (embedded; Celery on Redis; Celery on RabbitMQ, each
   broker a fresh server of this script's own on a free port): many one-input jobs
   (jobs/s, from the first submit to the last result), then a few large array jobs
   (inputs/s). The realised batch sizes of the job work come from the model's own
   record of each predict call.
2. Live latency under job load (embedded): wrk drives predict at a fixed concurrency
   for a while with no job running, then again while one large array job runs on the
   same model; the p99 ratio is the cost of jobs to live traffic (target: <= 1.2x),
   and the job's progress meanwhile is what the idle capacity gave it.

Results are printed as JSON; docs/benchmarks.md records a run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from run import (  # noqa: E402
    HOST, PY, ROOT, Server, batch_offset, free_port, git_info, http, machine_info,
    read_batches, run_wrk,
)
from tests.brokers import rabbitmq_server, redis_server  # noqa: E402

MODEL = "embeddings"
TEXTS = [
    "Corral serves machine-learning models over HTTP.",
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog near the riverbank at dawn.",
    "Batching across workers keeps the model busy.",
    "Jobs run in the background, below live requests, and survive restarts.",
]


def body(n: int, offset: int = 0) -> bytes:
    items = [{"text": f"{TEXTS[(i + offset) % len(TEXTS)]} #{i + offset}"} for i in range(n)]
    return json.dumps(items[0] if n == 1 else items).encode()


def serve(workdir: Path, env: dict[str, str], threads: int, replicas: int = 1) -> Server:
    port = free_port()
    env = dict(env, BENCH_MODELS=MODEL, BENCH_BATCH_DIR=str(workdir),
               EMBEDDINGS_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               CORRAL_DATA_DIR=str(workdir / "data"),
               CORRAL_MODELS__EMBEDDINGS__REPLICAS=str(replicas))
    argv = [PY, "-m", "corral", "serve", str(BENCH / "corral_app.py"), "--host", HOST,
            "--port", str(port), "--workers", "2", "--log-level", "info"]
    return Server(f"corral-{port}", "corral", argv, env, port, workdir / f"serve-{port}.log", 2)


def worker(workdir: Path, env: dict[str, str], threads: int) -> subprocess.Popen[bytes]:
    env = dict(env, BENCH_MODELS=MODEL, BENCH_BATCH_DIR=str(workdir),
               EMBEDDINGS_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    log = open(workdir / "worker.log", "ab")
    proc = subprocess.Popen([PY, "-m", "corral", "worker", str(BENCH / "corral_app.py")],
                            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 180
    while "corral worker ready" not in (workdir / "worker.log").read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"corral worker did not start; see {workdir / 'worker.log'}")
        time.sleep(0.2)
    return proc


def submit(server: Server, n: int, offset: int = 0) -> str:
    status, raw = http("POST", f"{server.base}/v1/models/{MODEL}/jobs", body(n, offset))
    if status != 202:
        raise RuntimeError(f"submit answered {status}: {raw[:300]!r}")
    return str(json.loads(raw)["id"])


def wait_all(server: Server, ids: list[str], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    for job_id in ids:
        while True:
            status, raw = http("GET", f"{server.base}/v1/jobs/{job_id}?wait=10", timeout=20)
            job = json.loads(raw)
            if status != 200:
                raise RuntimeError(f"job {job_id}: {status} {job}")
            if job["status"] in ("succeeded", "failed", "cancelled"):
                if job["status"] != "succeeded":
                    raise RuntimeError(f"job {job_id} {job['status']}: {job.get('error')}")
                last = job
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} not done in {timeout}s: {job['progress']}")
    return last


def batches(workdir: Path, offset: int) -> dict[str, Any]:
    sizes, _ = read_batches(workdir, MODEL, offset)
    calls = sum(sizes.values())
    return {"calls": calls,
            "mean": round(sum(k * v for k, v in sizes.items()) / calls, 2) if calls else None,
            "max": max(sizes) if sizes else None,
            "hist": {str(k): v for k, v in sorted(sizes.items())}}


def throughput(server: Server, workdir: Path, singles: int, arrays: int,
               array_size: int) -> dict[str, Any]:
    offset = batch_offset(workdir, MODEL)
    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda i: submit(server, 1, i), range(singles)))
    submitted = time.monotonic() - t0
    wait_all(server, ids, timeout=600)
    single_s = time.monotonic() - t0
    single_batches = batches(workdir, offset)
    offset = batch_offset(workdir, MODEL)
    t0 = time.monotonic()
    ids = [submit(server, array_size, 1000 * i) for i in range(arrays)]
    wait_all(server, ids, timeout=600)
    array_s = time.monotonic() - t0
    return {
        "single_input_jobs": singles,
        "submit_s": round(submitted, 2),
        "jobs_per_s": round(singles / single_s, 1),
        "single_batches": single_batches,
        "array_jobs": f"{arrays} x {array_size}",
        "inputs_per_s": round(arrays * array_size / array_s, 1),
        "array_batches": batches(workdir, offset),
    }


def live_p99(server: Server, workdir: Path, connections: int, seconds: float,
             job_size: int, env: dict[str, str]) -> dict[str, Any]:
    url = f"{server.base}/v1/models/{MODEL}/predict"
    baseline = run_wrk(url, connections, seconds, 2, env)
    offset = batch_offset(workdir, MODEL)
    job_id = submit(server, job_size, 50_000)
    time.sleep(0.5)  # running
    loaded = run_wrk(url, connections, seconds, 2, env)
    _, raw = http("GET", f"{server.base}/v1/jobs/{job_id}")
    progress = json.loads(raw)["progress"]
    mixed = batches(workdir, offset)
    http("DELETE", f"{server.base}/v1/jobs/{job_id}")

    def summary(w: dict[str, Any]) -> dict[str, Any]:
        return {"rps": round(w["requests"] / (w["duration_us"] / 1e6), 1),
                "p50_ms": w["latency_us"]["p50"] / 1000, "p99_ms": w["latency_us"]["p99"] / 1000,
                "non2xx": w["errors"]["status"]}

    base, load = summary(baseline), summary(loaded)
    return {"connections": connections, "seconds": seconds, "no_job": base,
            "with_job": load, "p99_ratio": round(load["p99_ms"] / base["p99_ms"], 2),
            "job_inputs_done_meanwhile": progress["done"], "job_inputs": job_size,
            "batches_meanwhile": mixed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, short runs")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per replica")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--backends", default="embedded,redis,amqp")
    args = parser.parse_args()
    singles, arrays, array_size = (60, 2, 64) if args.quick else (300, 4, 256)
    seconds = 5 if args.quick else 20
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT))
    results: dict[str, Any] = {"machine": machine_info(), "git": git_info(),
                               "command": " ".join(["python", "benchmarks/jobs.py",
                                                    *sys.argv[1:]]),
                               "backends": {}}
    for backend in args.backends.split(","):
        with ExitStack() as stack:
            workdir = Path(tempfile.mkdtemp(prefix=f"corral-bench-jobs-{backend}-"))
            benv = dict(env)
            proc = None
            if backend != "embedded":
                redis_url = stack.enter_context(redis_server(workdir / "redis"))
                broker = redis_url if backend == "redis" else stack.enter_context(
                    rabbitmq_server(workdir / "rabbit"))
                benv.update(CORRAL_BROKER_URL=broker, CORRAL_JOB_STORE_URL=redis_url)
            server = serve(workdir, benv, args.threads)
            server.start(timeout=240)
            stack.callback(server.stop)
            if backend != "embedded":
                proc = worker(workdir, benv, args.threads)
                stack.callback(lambda p=proc: (p.terminate(), p.wait(60)))
            print(f"[{backend}] throughput...", file=sys.stderr, flush=True)
            out = {"throughput": throughput(server, workdir, singles, arrays, array_size)}
            if backend == "embedded":
                print(f"[{backend}] live p99 with and without a job...", file=sys.stderr,
                      flush=True)
                out["live"] = {f"1 replica x {args.threads} threads, {c} connections":
                               live_p99(server, workdir, c, seconds, 20_000, env)
                               for c in (1, 8)}
                server.stop()
                # The same threads as two single-threaded replicas: one kept for live
                # requests while a job uses the other.
                server = serve(workdir, benv, 1, replicas=args.threads)
                server.start(timeout=240)
                stack.callback(server.stop)
                out["live"].update({f"{args.threads} replicas x 1 thread, {c} connections":
                                    live_p99(server, workdir, c, seconds, 20_000, env)
                                    for c in (1, 8)})
            results["backends"][backend] = out
            print(json.dumps({backend: out}, indent=1), file=sys.stderr, flush=True)
    text = json.dumps(results, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
