"""The Celery backend: each job is the task ``corral.run_job(job_id)``.

HTTP workers store the record, then send the task to ``CORRAL_BROKER_URL``.
``corral worker APP`` runs the model tree (dispatcher, replicas) without HTTP, and
a Celery worker (prefork, ``CORRAL_WORKER_CONCURRENCY`` processes) whose tasks feed
that local dispatcher: several jobs in flight at once, each in slices, so inputs of
different jobs batch together. The Celery processes never import the app.

What Corral sets against lost work (docs/jobs.md explains each):

- late acknowledgement with ``reject_on_worker_lost``: a task whose process dies is
  delivered again;
- soft and hard time limits above the job's own timeout, so a stuck task ends;
- retries (bounded) only for the record store being unreachable when the task
  starts; a job's transient errors (crashed replica, loading, saturated) are retried
  inside the runner;
- a sweep in every worker that sends again any job whose runner's lease ran out
  (its worker was killed) or that stayed queued ``CORRAL_JOB_REDELIVER_AFTER``
  seconds (its message lost, as by a Redis without persistence);
- with Redis, a visibility timeout longer than any job may run, so a slow job is not
  delivered twice while it runs.

The record decides: a delivery for a job that is finished, or leased to a live
runner, does nothing (at-least-once execution, first result wins).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

from ..config import Settings
from .records import JobRecord, now

logger = logging.getLogger(__name__)

TASK_NAME = "corral.run_job"
_HARD_LIMIT_MARGIN = 60.0  # seconds past the soft limit before Celery kills the process
_SOFT_LIMIT_MARGIN = 30.0  # past the job's own timeout, which ends it cleanly first


def make_celery(settings: Settings) -> Celery:
    """A Celery app for the broker of the settings, with Corral's delivery settings."""
    assert settings.broker_url
    app = Celery("corral", broker=settings.broker_url, set_as_current=False)
    options: dict[str, Any] = {}
    if settings.broker_url.startswith(("redis://", "rediss://")):
        # Unacknowledged tasks come back after this; longer than any job may take.
        options["visibility_timeout"] = int(settings.job_timeout + _SOFT_LIMIT_MARGIN
                                            + _HARD_LIMIT_MARGIN + 2 * settings.job_lease)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        task_soft_time_limit=settings.job_timeout + _SOFT_LIMIT_MARGIN,
        task_time_limit=settings.job_timeout + _SOFT_LIMIT_MARGIN + _HARD_LIMIT_MARGIN,
        task_ignore_result=True,
        task_default_queue=settings.job_queue,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        task_publish_retry_policy={"max_retries": 3, "interval_start": 0.1,
                                   "interval_step": 0.3, "interval_max": 1.0},
    )
    return app


def sender(settings: Settings) -> Callable[[JobRecord], None]:
    """How an HTTP worker hands a stored job to the workers."""
    app = make_celery(settings)

    def send(job: JobRecord) -> None:
        app.send_task(TASK_NAME, args=[job.id], queue=settings.job_queue, retry=True)

    return send


def worker_app(settings: Settings, runtime_dir: str) -> Celery:
    """The Celery app of ``corral worker``: the task, and the sweep."""
    from celery import signals

    from ..process.client import DispatcherEngine
    from ..process.runtime import Runtime
    from ..process.title import set_title
    from .backend import open_store, runner_settings
    from .runner import JobRunner, owner_dead, runner_id

    app = make_celery(settings)
    runtime = Runtime(runtime_dir)
    per_process: dict[int, JobRunner] = {}

    def runner() -> JobRunner:
        # One per pool process, made after the fork (sockets and store connections).
        pid = os.getpid()
        if pid not in per_process:
            sizes.clear()
            sizes.update({e.key: e.max_size for e in runtime.read_models()})
            per_process.clear()
            per_process[pid] = JobRunner(open_store(settings), DispatcherEngine(runtime),
                                         runner_settings(settings, sizes), runner_id(),
                                         time_limits=(SoftTimeLimitExceeded,))
        return per_process[pid]

    sizes: dict[str, int] = {}

    @app.task(name=TASK_NAME, bind=True,  # type: ignore[untyped-decorator]
              autoretry_for=(redis.ConnectionError, redis.TimeoutError,
                             sqlite3.OperationalError),
              retry_backoff=True, retry_backoff_max=30, max_retries=5)
    def run_job(self: Any, job_id: str) -> str:
        r = runner()
        current = r.store.get(job_id)
        if current is None or current.finished:
            return "skipped"
        if current.key not in sizes:
            # Every worker of a queue should serve the same app; this one cannot run it.
            # The job stays queued and a sweep sends it again later, for another worker.
            logger.error("job %s is for model %s, which this worker does not serve; set "
                         "CORRAL_JOB_QUEUE per app", job_id, current.key)
            return "not-served"
        dead = frozenset({current.owner} if current.owner and owner_dead(current.owner)
                         else ())
        job = r.store.start(job_id, r.owner, settings.job_lease, now(), dead)
        if job is None:
            return "skipped"  # running under a live lease elsewhere
        finished = r.run(job)
        return "stopped" if finished is None else finished.status

    @signals.worker_process_init.connect(weak=False)  # type: ignore[untyped-decorator]
    def title_pool_process(**_: Any) -> None:
        set_title("jobs-pool", runtime_dir)  # Celery titled it; ps shows whose it is

    @signals.worker_ready.connect(weak=False)  # type: ignore[untyped-decorator]
    def start_sweep(**_: Any) -> None:
        set_title("jobs", runtime_dir)
        logger.info("corral worker ready: running jobs from queue %s with %d processes",
                    settings.job_queue, settings.worker_concurrency)
        threading.Thread(target=_sweep, args=(settings, app), name="corral-job-sweep",
                         daemon=True).start()

    return app


def _sweep(settings: Settings, app: Celery) -> None:
    """Send again every job whose message may be lost (see the module docstring)."""
    from .backend import open_store

    store = open_store(settings)
    every = max(1.0, settings.job_lease / 2)
    while True:
        time.sleep(every)
        try:
            for job_id in store.lost(now(), settings.job_redeliver_after, limit=1000):
                if store.requeue(job_id, now(), settings.job_redeliver_after):
                    logger.info("job %s: its runner is gone or its message lost; sending it "
                                "again", job_id)
                    app.send_task(TASK_NAME, args=[job_id], queue=settings.job_queue)
            store.purge(now())
        except Exception:
            logger.warning("job sweep failed; trying again", exc_info=True)


def _wait_for_models(runtime_dir: str) -> None:
    """Take no task before the models are done loading: a task taken while they load
    would only wait, and keep its job from a worker that is ready."""
    from ..process.runtime import Runtime

    runtime = Runtime(runtime_dir)
    logged = False
    while True:
        try:
            states = {s.state for s in runtime.read_status().values()}
        except (OSError, ValueError):
            states = {"loading"}
        if states and "loading" not in states:
            return
        if not logged:
            logger.info("waiting for the models to load before taking jobs")
            logged = True
        time.sleep(0.2)


def run_worker(settings: Settings, runtime_dir: str) -> int:
    """Run the Celery worker of ``corral worker`` until it is told to stop."""
    _wait_for_models(runtime_dir)
    app = worker_app(settings, runtime_dir)
    worker = app.Worker(
        pool="prefork", concurrency=settings.worker_concurrency, queues=[settings.job_queue],
        hostname=f"corral@{socket.gethostname()}.{os.getpid()}",
        without_gossip=True, without_mingle=True, without_heartbeat=True,
        loglevel=settings.log_level.upper(), optimization="fair",
    )
    worker.start()
    return int(worker.exitcode or 0)
