"""The jobs process: ``python -m corral.process jobs RUNTIME_DIR``.

With the embedded backend it runs the loop of :mod:`corral.jobs.embedded`: claims
jobs from the SQLite store and sends their inputs to the dispatcher on the
background lane. Under ``corral worker`` (a broker is set) it is the Celery worker
instead. Either way it is a client of the dispatcher, like an HTTP worker, and
never imports the app: inputs were validated when the job was submitted, and the
replica validates each one again, as it does every request's.
"""

from __future__ import annotations

import signal
from typing import Any

from ..log import configure_logging
from .runtime import Runtime
from .title import set_title


def main(argv: list[str]) -> int:
    from ..jobs.backend import open_store, runner_settings
    from ..jobs.embedded import EmbeddedLoop, Wakeup
    from ..jobs.runner import JobRunner, runner_id
    from .client import DispatcherEngine

    runtime = Runtime(argv[0])
    _, settings = runtime.read_plan()
    configure_logging(settings.log_level, settings.log_format)
    set_title("jobs", runtime.path)
    if settings.broker_url:
        from ..jobs.celery_backend import run_worker

        return run_worker(settings, str(runtime.path))
    engine = DispatcherEngine(runtime)
    engine.start()
    sizes = {entry.key: entry.max_size for entry in runtime.read_models()}
    store = open_store(settings)
    runner = JobRunner(store, engine, runner_settings(settings, sizes), runner_id())
    loop = EmbeddedLoop(store, runner, settings.job_concurrency, Wakeup(runtime.jobs_wake),
                        frozenset(sizes))

    def stop(signum: int, frame: Any) -> None:
        loop.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    loop.run()
    engine.stop()
    return 0
