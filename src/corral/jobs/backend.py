"""Choosing the jobs backend from Settings, and building its parts.

- No ``CORRAL_BROKER_URL``: the **embedded** backend. Records in SQLite under
  ``CORRAL_DATA_DIR``; the jobs process of ``corral serve`` (or, with models
  in-process, a thread of each WSGI worker) runs them.
- ``CORRAL_BROKER_URL`` set (``redis://`` or ``amqp://``): **Celery**. Each job is a
  task that ``corral worker`` processes run. Records live where every instance and
  worker sees them: ``CORRAL_JOB_STORE_URL`` (``redis://...``, or ``sqlite:////dir``
  for instances on one machine), by default the broker itself when it is Redis.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from ..config import Settings
from ..engine import Engine, Input
from ..errors import StartupError
from ..registry.spec import ModelKey
from .records import JobRecord, JobStore
from .runner import RunnerSettings
from .sqlite import SQLiteJobStore

if TYPE_CHECKING:
    from ..registry.catalog import Catalog
    from .service import JobService

# The dispatcher takes input documents as they are: a runner that has no model code
# sends the JSON only (the replica validates it, as it does every request's).
class _JsonOnly(BaseModel):
    pass


_NO_VALUE = _JsonOnly()


def store_url(settings: Settings) -> str:
    """Where the records live, as a URL."""
    if settings.job_store_url:
        return settings.job_store_url
    broker = settings.broker_url or ""
    if broker.startswith(("redis://", "rediss://")):
        return broker
    if broker:
        raise StartupError(
            f"CORRAL_BROKER_URL is {broker.split('://')[0]}://...: set CORRAL_JOB_STORE_URL to "
            "where job records live for every instance and worker (redis://host:6379/0, or "
            "sqlite:////shared/dir for instances on one machine).")
    return f"sqlite:///{settings.data_dir}"  # absolute (Settings makes it so)


def open_store(settings: Settings) -> JobStore:
    """The job store the settings name."""
    url = store_url(settings)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from .redis_store import RedisJobStore

        return RedisJobStore(url)
    if url.startswith("sqlite:///"):
        # sqlite:///relative/dir or sqlite:////absolute/dir: the directory of jobs.sqlite3.
        return SQLiteJobStore(Path(url.removeprefix("sqlite:///")))
    raise StartupError(f"CORRAL_JOB_STORE_URL must be redis://... or sqlite:///...; got {url!r}.")


def runner_settings(settings: Settings, slice_size: dict[str, int],
                    catalog: Catalog | None = None) -> RunnerSettings:
    """How runners of this server run jobs. With a catalog, inputs are validated into
    objects (an in-process engine computes them as such); without, sent as JSON."""

    def decode(key: ModelKey, document: bytes) -> Input:
        if catalog is None:
            return Input(_NO_VALUE, document)
        from ..schema.inputs import validate_item

        return Input(validate_item(catalog.resolve(key.name, key.version).input_type,
                                   document), document)

    return RunnerSettings(
        lease=settings.job_lease, keep=settings.job_ttl, max_attempts=settings.job_max_attempts,
        timeout=settings.job_timeout,
        slice_size=lambda key: slice_size.get(str(key), 1),
        decode=decode)


def open_service(settings: Settings, engine: Engine, catalog: Catalog,
                 wake_path: str | None, inline: frozenset[str] = frozenset()) -> JobService:
    """The JobService of an HTTP worker. ``wake_path`` is the jobs process's wake-up socket
    when a process tree runs the jobs; None runs them in this process. Either way, jobs of
    models this process computes itself (every model in-process; with a tree, the
    ``inline`` ones: ``name:version`` keys) are run by a loop of this process."""
    from .service import JobService

    store = open_store(settings)
    if settings.broker_url:  # corral worker computes every model, inline ones included
        from .celery_backend import sender

        return JobService(store, sender(settings))
    local = [spec for spec in catalog if wake_path is None or str(spec.key) in inline]
    if not local:
        from .embedded import wake

        assert wake_path is not None
        return JobService(store, lambda job: wake(wake_path))

    from .embedded import STOP_GRACE, EmbeddedLoop, Wakeup, wake
    from .runner import JobRunner, runner_id

    sizes = {str(spec.key): spec.batching.max_size for spec in local}
    wakeup = Wakeup()

    def start_runner() -> Callable[[], None]:
        import threading

        runner = JobRunner(store, engine, runner_settings(settings, sizes, catalog), runner_id())
        loop = EmbeddedLoop(store, runner, settings.job_concurrency, wakeup, frozenset(sizes))
        thread = threading.Thread(target=loop.run, name="corral-jobs", daemon=True)
        thread.start()

        def stop() -> None:
            loop.stop()
            thread.join(STOP_GRACE + 1)

        return stop

    def send(job: JobRecord) -> None:
        if job.key in sizes:
            wakeup.set()
        elif wake_path is not None:
            wake(wake_path)

    return JobService(store, send, start_runner, eager=wake_path is not None)
