"""What ``corral bench`` measured, as plain JSON-able data, and how two runs compare.

The JSON written by ``--json`` is this module's format (``FORMAT``)::

    {
      "format": "corral-bench/1",
      "started": "2026-12-03T17:20:00+00:00", "finished": "...",
      "command": "corral bench examples/quickstart.py ...",
      "target": {"kind": "app" | "url", "value": "examples/quickstart.py",
                 "url": "http://127.0.0.1:40123"},
      "machine": {"cpus": 2, "cpu_model": "...", "python": "3.11.7", "corral": "0.1.0"},
      "generator": {"name": "wrk" | "built-in", "version": "...",
                    "mode": "closed" | "open" | "find-max"},
      "settings": {"duration_s": 10, "warmup_s": 2, "concurrency": [1, 4, 16, 64],
                   "rates": null, "slo_p99_ms": null, "timeout_s": 30},
      "runs": [Run, ...],
      "find_max": {"MODEL": {"slo_p99_ms": 200, "best_rate": 850.0 | null,
                             "steps": [Run, ...]}} | null,
      "notes": ["..."]          # what the reader must know (generator limits, ...)
    }

A ``Run`` is one model at one level (a concurrency, closed loop; or a rate, open loop)::

    {
      "model": "iris", "mode": "closed" | "open",
      "concurrency": 16 | null, "rate": null | 200.0,
      "duration_s": 10.01, "requests": 12345, "rps": 1233.2,
      "latency_ms": {"mean": .., "p50": .., "p90": .., "p99": .., "p999": .., "max": ..},
      "percentiles": [[0.0, 1.2], [5.0, 1.4], ..., [100.0, 30.1]],   # (percent, ms)
      "statuses": {"200": 12300, "503": 45},
      "socket_errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0},
      "errors": 45,                                  # non-2xx answers + socket errors
      "generator_cores": 0.31,                       # CPU the generator used, in cores
      "sent_rate": 199.8 | null, "send_lag_p99_ms": 0.4 | null,   # open loop only
      "kept_rate": true | null,
      "server": null | {                             # read from the server's /metrics
        "requests": 12345, "statuses": {"200": 12300, "503": 45},
        "batches": 800, "batch_mean": 15.4,
        "batch_hist": {"1": 3, "2": 0, "3-4": 10, ..., ">512": 0},
        "queue_wait_ms_mean": 4.1, "predict_ms_mean": 9.8,
        "cpu_ms_per_request": 0.71 | null, "cpu_cores": 1.2 | null  # only when bench
      }                                                              # started the server
    }

Latencies of an open-loop run are measured from the time each request was due to be
sent, not from when it went out, so a stalled server cannot hide behind a generator
that waited for it (coordinated omission).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

FORMAT = "corral-bench/1"

# Percent points kept for every run: enough for a latency-by-percentile curve.
PERCENT_POINTS = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0, 55.0,
                  60.0, 65.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0, 97.5, 99.0, 99.5, 99.9,
                  99.99, 100.0)


def percentile(ordered: list[float], percent: float) -> float:
    """The value below which ``percent`` of ``ordered`` (sorted ascending) lies
    (nearest rank, as wrk and HdrHistogram report)."""
    if not ordered:
        return math.nan
    rank = math.ceil(round(percent * len(ordered) / 100, 9))  # 99.9% of 1000 is 999
    return ordered[min(len(ordered), max(rank, 1)) - 1]


def summarize_latencies(seconds: list[float]) -> tuple[dict[str, float], list[list[float]]]:
    """``latency_ms`` and ``percentiles`` of a run from its latencies in seconds."""
    ordered = sorted(s * 1000 for s in seconds)
    if not ordered:
        return {}, []
    summary = {"mean": sum(ordered) / len(ordered),
               "p50": percentile(ordered, 50), "p90": percentile(ordered, 90),
               "p99": percentile(ordered, 99), "p999": percentile(ordered, 99.9),
               "max": ordered[-1]}
    return summary, [[p, percentile(ordered, p)] for p in PERCENT_POINTS]


def describe_level(concurrency: int | None, rate: float | None) -> str:
    """How a level reads: ``1 conn``, ``16 conns`` or ``200/s``."""
    if rate:
        return f"{rate:g}/s"
    return f"{concurrency} conn" + ("s" if concurrency != 1 else "")


def level_label(run: dict[str, Any]) -> str:
    """How a run's level reads in a table (see :func:`describe_level`)."""
    return describe_level(run.get("concurrency"), run.get("rate") if run.get("mode") == "open"
                          else None)


def failures(statuses: dict[str, Any], socket_errors: dict[str, Any]) -> dict[str, int]:
    """Failed requests by kind: each status of 400 or more, and each kind of socket
    error, with their counts (kinds that did not happen left out)."""
    out = {s: int(n) for s, n in statuses.items()
           if str(s).isdigit() and int(s) >= 400 and n}
    out |= {kind: int(n) for kind, n in socket_errors.items() if n}
    return out


def client_run(requests: int, duration_s: float, latency_ms: dict[str, float],
               percentiles: list[list[float]], statuses: dict[str, int],
               socket_errors: dict[str, int]) -> dict[str, Any]:
    """The client's half of a run (see the module's docstring), whichever generator ran."""
    errors = {k: socket_errors.get(k, 0) for k in ("connect", "read", "write", "timeout")}
    return {
        "duration_s": duration_s, "requests": requests,
        "rps": requests / duration_s if duration_s else 0.0,
        "latency_ms": latency_ms if requests else {},
        "percentiles": percentiles if requests else [],
        "statuses": dict(sorted(statuses.items())), "socket_errors": errors,
        "errors": sum(failures(statuses, errors).values()),
        "sent_rate": None, "send_lag_p99_ms": None, "kept_rate": None,
    }


def error_rate(run: dict[str, Any]) -> float:
    """Share of requests that failed (non-2xx or socket errors), 0..1."""
    total = run["requests"] + sum(run.get("socket_errors", {}).values())
    return run["errors"] / total if total else 0.0


# -- comparing two runs -------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One measured value of one cell (model, level) in an old and a new run."""

    model: str
    level: str
    metric: str  # "rps", "p50", "p99", "errors" or "max-rate" (--find-max)
    old: float
    new: float
    regressed: bool

    @property
    def change(self) -> str:
        if self.metric == "errors":  # a share: compared in percentage points
            return f"{(self.new - self.old) * 100:+.2f} pp"
        if self.old == 0:
            return "n/a"
        return f"{(self.new - self.old) / self.old * 100:+.1f}%"


# A latency change smaller than this never counts as a regression, whatever its share:
# 0.9 -> 1.1 ms is +22% and means nothing.
MIN_LATENCY_CHANGE_MS = 1.0


def cells(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """The runs of a document by (model, level)."""
    return {(r["model"], level_label(r)): r for r in doc.get("runs", [])}


def compare(old: dict[str, Any], new: dict[str, Any], threshold: float,
            error_threshold: float = 0.01) -> list[Change]:
    """Every cell present in both runs, metric by metric, and each model's --find-max
    answer when both have one.

    A cell regressed when its throughput fell, or its p50 or p99 rose (by at least
    ``MIN_LATENCY_CHANGE_MS``), by more than ``threshold`` (a fraction: 0.1 = 10%), or
    its error rate rose by more than ``error_threshold`` (a fraction of requests); a
    model's highest rate within its SLO regressed when it fell by more than
    ``threshold``, or is gone.
    """
    before, after = cells(old), cells(new)
    out: list[Change] = []
    for key in [k for k in after if k in before]:
        a, b = before[key], after[key]
        model, level = key
        out.append(Change(model, level, "rps", a["rps"], b["rps"],
                          b["rps"] < a["rps"] * (1 - threshold)))
        for p in ("p50", "p99"):
            x, y = a["latency_ms"].get(p, math.nan), b["latency_ms"].get(p, math.nan)
            out.append(Change(model, level, p, x, y,
                              y > x * (1 + threshold) and y - x >= MIN_LATENCY_CHANGE_MS))
        ea, eb = error_rate(a), error_rate(b)
        out.append(Change(model, level, "errors", ea, eb, eb > ea + error_threshold))
    found_old, found_new = old.get("find_max") or {}, new.get("find_max") or {}
    for model in [m for m in found_new if m in found_old]:
        x, y = found_old[model].get("best_rate") or 0.0, found_new[model].get("best_rate") or 0.0
        out.append(Change(model, f"p99 <= {found_new[model].get('slo_p99_ms', 0):g} ms",
                          "max-rate", x, y, y < x * (1 - threshold)))
    return out


def unmatched(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Cells measured in only one of the two runs, as "model at level (old only)"."""
    a, b = cells(old), cells(new)
    return ([f"{m} at {lv} (old only)" for m, lv in a if (m, lv) not in b]
            + [f"{m} at {lv} (new only)" for m, lv in b if (m, lv) not in a])


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between the two runs besides the server: generator, machine."""
    out = []
    for part, keys in (("generator", ("name", "version")), ("machine", ("cpus", "cpu_model"))):
        x = [old.get(part, {}).get(k) for k in keys]
        y = [new.get(part, {}).get(k) for k in keys]
        if x != y:
            out.append(f"the {part} differs: {' '.join(map(str, x))} -> "
                       f"{' '.join(map(str, y))}")
    return out


def check_format(doc: Any, name: str) -> dict[str, Any]:
    """``doc`` if it is a ``corral bench --json`` document, else ValueError saying why."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{name} is not a corral bench --json file (no \"format\": "
                         f"\"{FORMAT}\").")
    runs = doc.get("runs")
    if not isinstance(runs, list) or not all(map(_valid_run, runs)):
        raise ValueError(f"{name} has no valid \"runs\" list.")
    return doc


def _valid_run(r: Any) -> bool:
    number = (int, float)
    return (isinstance(r, dict) and isinstance(r.get("model"), str)
            and r.get("mode") in ("open", "closed")
            and isinstance(r.get("concurrency" if r.get("mode") == "closed" else "rate"),
                           number)
            and isinstance(r.get("rps"), number) and isinstance(r.get("requests"), int)
            and isinstance(r.get("errors"), int) and isinstance(r.get("latency_ms"), dict)
            and all(isinstance(v, number) for v in r["latency_ms"].values())
            and isinstance(r.get("socket_errors", {}), dict))
