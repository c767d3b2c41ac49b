"""The ceiling: the MiniLM model's own throughput, no HTTP, one process.

    EMBEDDINGS_THREADS=2 OMP_NUM_THREADS=2 python benchmarks/ceiling.py --seconds 10

Loads examples/embeddings.py's EmbeddingsModel exactly as a Corral replica does
(load(), EMBEDDINGS_THREADS torch threads) and calls predict() on full batches of
max_size copies of the benchmark's text for --seconds, after two warm-up batches.
Prints one JSON object: inputs/s, batches and per-batch times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from workloads import TEXT

from examples.embeddings import EmbeddingsModel, Text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=EmbeddingsModel.batching.max_size,
                        help="inputs per predict call (default: the model's max_size)")
    args = parser.parse_args()

    model = EmbeddingsModel()
    model.load()
    batch = [Text(text=TEXT) for _ in range(args.batch)]
    for _ in range(2):
        model.predict(batch)
    times = []
    busy0, cpu0 = _machine_busy_s(), _own_cpu_s()
    start = time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        t = time.perf_counter()
        model.predict(batch)
        times.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - start
    own = _own_cpu_s() - cpu0
    other = max(0.0, _machine_busy_s() - busy0 - own) / elapsed
    print(json.dumps({
        "batch": args.batch,
        "threads": os.environ.get("EMBEDDINGS_THREADS"),
        "batches": len(times),
        "seconds": round(elapsed, 3),
        "inputs_per_s": len(times) * args.batch / elapsed,
        "batch_ms_p50": statistics.median(times) * 1000,
        "batch_ms_max": max(times) * 1000,
        "inputs_per_s_from_median": args.batch / statistics.median(times),
        "cpu_cores": own / elapsed,
        # CPU the rest of the machine used meanwhile, in cores: the noise indicator.
        "other_cores": other,
    }))


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _machine_busy_s() -> float:
    """Non-idle CPU seconds of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    return (sum(parts) - parts[3] - parts[4]) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
