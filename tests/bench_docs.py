"""Synthetic ``corral bench --json`` documents for the report tests.

The format is documented atop corral.bench.results.
"""

from __future__ import annotations

from typing import Any

from corral.bench.results import FORMAT, PERCENT_POINTS

# A model name that runs a script if the report forgets to escape it.
HOSTILE = "<script>window.pwned = 1</script>evil"
# A note that fetches, and runs a script, if not escaped.
HOSTILE_NOTE = '<img src="x.png" onerror="window.pwned = 2">'
RATE_NOTE = "could not keep the asked rate of 400/s for 'evil' (sent 310/s)"


def percentiles(p50: float, p99: float, top: float) -> list[list[float]]:
    """A plausible latency-by-percentile curve through p50 and p99, ending at ``top``."""
    points = []
    for p in PERCENT_POINTS:
        if p <= 50:
            ms = p50 * (0.6 + 0.4 * p / 50)
        elif p <= 99:
            ms = p50 + (p99 - p50) * ((p - 50) / 49) ** 3
        else:
            ms = p99 + (top - p99) * ((p - 99) / 1) ** 2
        points.append([p, round(ms, 3)])
    return points


def run(model: str, *, concurrency: int | None = None, rate: float | None = None,
        rps: float, p50: float, p99: float, top: float, statuses: dict[str, int],
        socket_errors: dict[str, int] | None = None, server: dict[str, Any] | None = None,
        sent_rate: float | None = None, kept_rate: bool | None = None) -> dict[str, Any]:
    """One run; latency summary, request and error counts are derived from what is given."""
    socket_errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0, **(socket_errors or {})}
    curve = percentiles(p50, p99, top)
    at = dict((p, ms) for p, ms in curve)
    errors = sum(n for s, n in statuses.items() if not s.startswith("2")) + sum(
        socket_errors.values())
    return {
        "model": model, "mode": "open" if rate is not None else "closed",
        "concurrency": concurrency, "rate": rate,
        "duration_s": 10.01, "requests": sum(statuses.values()), "rps": rps,
        "latency_ms": {"mean": round(p50 * 1.1, 3), "p50": at[50.0], "p90": at[90.0],
                       "p99": at[99.0], "p999": at[99.9], "max": top},
        "percentiles": curve, "statuses": statuses, "socket_errors": socket_errors,
        "errors": errors, "generator_cores": 0.31,
        "sent_rate": sent_rate, "send_lag_p99_ms": 0.4 if rate is not None else None,
        "kept_rate": kept_rate, "server": server,
    }


def server(requests: int, batch_mean: float, hist: list[int], queue: float,
           predict: float, statuses: dict[str, int]) -> dict[str, Any]:
    """Server metrics for one run; ``hist`` gives the counts of the buckets 1, 2, 3-4, ..."""
    labels = ["1", "2", "3-4", "5-8", "9-16", "17-32", "33-64", "65-128", "129-256",
              "257-512", ">512"]
    counts = hist + [0] * (len(labels) - len(hist))
    return {"requests": requests, "statuses": statuses, "batches": sum(counts),
            "batch_mean": batch_mean, "batch_hist": dict(zip(labels, counts)),
            "queue_wait_ms_mean": queue, "predict_ms_mean": predict,
            "cpu_ms_per_request": 0.71, "cpu_cores": 1.2}


def bench_doc() -> dict[str, Any]:
    """Two models: 'iris' closed loop at 1, 4 and 16 connections with server metrics and
    errors at 16; HOSTILE open loop at 100, 200 and 400/s without server metrics, with a
    find-max search."""
    iris = [
        run("iris", concurrency=1, rps=412.5, p50=2.3, p99=4.1, top=9.0,
            statuses={"200": 4129},
            server=server(4129, 1.0, [4129], 0.05, 2.0, {"200": 4129})),
        run("iris", concurrency=4, rps=1233.2, p50=3.1, p99=7.7, top=21.0,
            statuses={"200": 12345},
            server=server(12345, 3.2, [300, 500, 2800], 0.9, 2.4, {"200": 12345})),
        run("iris", concurrency=16, rps=2048.75, p50=7.4, p99=31.0, top=120.0,
            statuses={"200": 20400, "503": 45}, socket_errors={"timeout": 3},
            server=server(20445, 11.8, [10, 20, 40, 300, 1400], 4.1, 9.8,
                          {"200": 20400, "503": 45})),
    ]
    evil = [
        run(HOSTILE, rate=100.0, rps=99.9, p50=5.0, p99=9.0, top=14.0,
            statuses={"200": 1000}, sent_rate=99.9, kept_rate=True),
        run(HOSTILE, rate=200.0, rps=199.4, p50=6.0, p99=15.0, top=30.0,
            statuses={"200": 1996}, sent_rate=199.8, kept_rate=True),
        run(HOSTILE, rate=400.0, rps=305.1, p50=40.0, p99=480.0, top=900.0,
            statuses={"200": 3052}, sent_rate=310.0, kept_rate=False),
    ]
    return {
        "format": FORMAT,
        "started": "2026-12-03T17:20:00+00:00", "finished": "2026-12-03T17:22:10+00:00",
        "command": "corral bench examples/quickstart.py --report out.html",
        "target": {"kind": "app", "value": "examples/quickstart.py",
                   "url": "http://127.0.0.1:40123"},
        "machine": {"cpus": 2, "cpu_model": "Test CPU @ 2.0GHz", "python": "3.11.7",
                    "corral": "0.1.0"},
        "generator": {"name": "built-in", "version": "0.1.0", "mode": "closed"},
        "settings": {"duration_s": 10, "warmup_s": 2, "concurrency": [1, 4, 16],
                     "rates": [100.0, 200.0, 400.0], "slo_p99_ms": 50, "timeout_s": 30},
        "runs": iris + evil,
        "find_max": {HOSTILE: {"slo_p99_ms": 50, "best_rate": 200.0,
                               "steps": [evil[0], evil[2], evil[1]]}},
        "notes": [RATE_NOTE, HOSTILE_NOTE],
    }
