"""What the server counted during a load test, from two reads of its ``/metrics``.

A run reads the metrics before and after; the difference, for one model, gives the
requests the server answered (by status), the batches it formed and their sizes, and
the mean time an input waited in the queue against the mean time a batch spent in
predict().
"""

from __future__ import annotations

import math
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from .target import fetch

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def read_metrics(base_url: str) -> Samples:
    """Every sample of the server's /metrics, keyed by (name, labels)."""
    status, raw = fetch(base_url.rstrip("/") + "/metrics")
    if status != 200:
        return {}
    out: Samples = {}
    for family in text_string_to_metric_families(raw.decode("utf-8", "replace")):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _sum(samples: Samples, name: str, model: str, **labels: str) -> float:
    want = {("model", model), *labels.items()}
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


def requests_by_status(samples: Samples, model: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for (name, labels), value in samples.items():
        lab = dict(labels)
        if name == "corral_requests_total" and lab.get("model") == model:
            out[lab["status"]] = out.get(lab["status"], 0) + int(value)
    return out


def server_side(before: Samples, after: Samples, model: str) -> dict[str, Any]:
    """The ``server`` part of a run (see results.py) from two reads of /metrics."""
    def delta(name: str, **labels: str) -> float:
        return _sum(after, name, model, **labels) - _sum(before, name, model, **labels)

    old, new = requests_by_status(before, model), requests_by_status(after, model)
    statuses = {s: n - old.get(s, 0) for s, n in sorted(new.items()) if n - old.get(s, 0)}
    batches = delta("corral_batch_size_count")
    inputs = delta("corral_batch_size_sum")
    waits = delta("corral_queue_wait_seconds_count")
    predicts = delta("corral_predict_duration_seconds_count")
    return {
        "requests": sum(statuses.values()),
        "statuses": statuses,
        "batches": int(batches),
        "batch_mean": inputs / batches if batches else None,
        "batch_hist": _batch_hist(before, after, model),
        "queue_wait_ms_mean": (delta("corral_queue_wait_seconds_sum") / waits * 1000
                               if waits else None),
        "predict_ms_mean": (delta("corral_predict_duration_seconds_sum") / predicts * 1000
                            if predicts else None),
    }


def _batch_hist(before: Samples, after: Samples, model: str) -> dict[str, int]:
    """Batches per size range (``"1"``, ``"2"``, ``"3-4"``, ... ``">512"``)."""
    def buckets(samples: Samples) -> dict[float, float]:
        out: dict[float, float] = {}
        for (name, labels), value in samples.items():
            lab = dict(labels)
            if name == "corral_batch_size_bucket" and lab.get("model") == model:
                bound = float(lab["le"])
                out[bound] = out.get(bound, 0.0) + value
        return out

    old, new = buckets(before), buckets(after)
    hist: dict[str, int] = {}
    below = low = 0.0  # cumulative count and upper bound of the previous bucket
    for bound in sorted(new):
        cum = new[bound] - old.get(bound, 0.0)
        if math.isinf(bound):
            label = f">{low:g}"
        elif bound == low + 1:
            label = f"{bound:g}"
        else:
            label = f"{low + 1:g}-{bound:g}"
        hist[label] = int(cum - below)
        below, low = cum, bound
    return hist
