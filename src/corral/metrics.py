"""Prometheus metrics, correct across every process of a server.

The metric names are API (DESIGN section 7). Under ``corral serve`` every process
(HTTP workers, dispatchers, replicas, the supervisor) records into files in the
instance's runtime directory, through prometheus_client's multiprocess mode, which
the supervisor turns on for its children by setting ``PROMETHEUS_MULTIPROC_DIR``
before they start; ``GET /metrics`` in any HTTP worker sums them. In-process mode
uses the ordinary in-memory registry.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

if TYPE_CHECKING:
    from .batching.queue import Batch

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

REQUESTS = Counter("corral_requests", "Predict requests answered, by HTTP status.",
                   ["model", "version", "status"])
REQUEST_DURATION = Histogram("corral_request_duration_seconds",
                             "Time from receiving a predict request to answering it.",
                             ["model", "version"], buckets=_LATENCY)
QUEUE_DEPTH = Gauge("corral_queue_depth", "Inputs waiting in the model's queue.", ["model"],
                    multiprocess_mode="livesum")
BATCH_SIZE = Histogram("corral_batch_size", "Inputs per call to predict.", ["model"],
                       buckets=_BATCH)
QUEUE_WAIT = Histogram("corral_queue_wait_seconds",
                       "Time a request waited in the queue before its batch went out.",
                       ["model"], buckets=_LATENCY)
PREDICT_DURATION = Histogram("corral_predict_duration_seconds",
                             "Time one call to predict took (a whole batch).", ["model"],
                             buckets=_LATENCY)
MODEL_LOAD = Gauge("corral_model_load_seconds", "How long the latest load() took.", ["model"],
                   multiprocess_mode="max")
JOBS = Counter("corral_jobs", "Jobs accepted, and jobs finished by status.", ["model", "status"])
REPLICA_RESTARTS = Counter("corral_replica_restarts", "Replica processes restarted.", ["model"])


@functools.cache
def labelled(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, looked up once per process (the hot path calls it per
    request; prometheus_client checks and locks on every call)."""
    return metric.labels(*values)


def observe_batch(key: str, batch: Batch, now: float) -> None:
    """Record a batch of model version ``key`` (name:version) going out: its size, and
    how long each request in it waited. Labelled by model name."""
    model = key.rpartition(":")[0]
    labelled(BATCH_SIZE, model).observe(batch.size)
    wait = labelled(QUEUE_WAIT, model)
    for piece in batch.slices:
        if piece.start == 0:  # a request's first slice: its time in the queue
            wait.observe(now - piece.ticket.enqueued_at)


def render() -> tuple[bytes, str]:
    """The metrics of every process of this server, in Prometheus text format."""
    directory = os.environ.get(MULTIPROC_ENV)  # set by the supervisor for its children
    if directory:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def process_exited(pid: int, directory: str | None = None) -> None:
    """Drop a dead process's live gauges (its counters and histograms are kept).

    ``directory`` is the multiprocess directory, for a parent (the supervisor) that
    does not record metrics itself; by default, this process's own.
    """
    directory = directory or os.environ.get(MULTIPROC_ENV)
    if directory:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
