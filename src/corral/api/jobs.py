"""The jobs endpoints: submit (202), read (with long-poll), cancel."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, g, request

from .. import metrics
from ..config import Settings
from ..errors import (
    CorralError,
    IdempotencyKeyReused,
    InvalidInput,
    JobFinished,
    JobNotFound,
    JobStoreUnavailable,
)
from ..jobs.records import JobRecord, looks_like_job_id, new_job_id, now
from ..jobs.service import JobService
from ..registry.catalog import Catalog
from ..schema.inputs import parse_json, validate_inputs
from .body import read_json_body
from .routes import json_response, parse_seconds

logger = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"


def _time(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def job_document(job: JobRecord) -> dict[str, Any]:
    """A job as the API shows it."""
    doc: dict[str, Any] = {
        "id": job.id, "model": job.model, "version": job.version, "status": job.status,
        "created_at": _time(job.created_at), "started_at": _time(job.started_at),
        "finished_at": _time(job.finished_at), "expires_at": _time(job.expires_at),
        "progress": {"done": job.done, "total": job.total},
        "attempts": job.attempts,
        "links": {"self": f"{request.script_root}/v1/jobs/{job.id}",
                  "model": f"{request.script_root}/v1/models/{job.model}"},
    }
    if job.status == "succeeded":
        doc["result"] = job.result
    if job.error is not None:
        doc["error"] = job.error
    return doc


@contextmanager
def _store() -> Iterator[None]:
    """A store that fails (Redis down, the SQLite file locked or unwritable) is a 503."""
    try:
        yield
    except CorralError:
        raise
    except Exception as exc:
        logger.warning("job store failed: %s", exc, exc_info=True)
        raise JobStoreUnavailable("The job store cannot be reached right now; retry "
                                  "shortly.", retry_after=2) from None


class JobRoutes:
    """Handlers bound to one catalog, job service and settings."""

    def __init__(self, catalog: Catalog, jobs: JobService, settings: Settings,
                 max_waiters: int) -> None:
        self.catalog, self.jobs, self.settings = catalog, jobs, settings
        # Long-polls one process holds at once; past that, GET answers at once.
        self._waiters = threading.BoundedSemaphore(max(0, max_waiters))

    def register(self, app: Flask) -> None:
        app.add_url_rule("/v1/models/<name>/jobs", "submit_job", self.submit, methods=["POST"])
        app.add_url_rule("/v1/models/<name>/versions/<version>/jobs", "submit_job_version",
                         self.submit, methods=["POST"])
        app.add_url_rule("/v1/jobs/<job_id>", "get_job", self.get, methods=["GET"])
        app.add_url_rule("/v1/jobs/<job_id>", "cancel_job", self.cancel, methods=["DELETE"])

    def submit(self, name: str, version: str | None = None) -> Response:
        spec = self.catalog.resolve(name, version)
        key = self._idempotency_key()
        body = read_json_body(request, self.settings.max_body_bytes)
        payload = parse_json(body, self.settings.max_json_depth)
        inputs, is_batch = validate_inputs(spec.input_type, body, payload,
                                           self.settings.job_max_items)
        g.model = spec.key
        documents = [i.json for i in inputs]
        fingerprint = hashlib.sha256(b"\n".join([str(spec.key).encode(), *documents])
                                     ).hexdigest()
        t = now()
        job = JobRecord(id=new_job_id(), model=spec.name, version=spec.version,
                        total=len(inputs), is_batch=is_batch,
                        per_item_errors=spec.per_item_errors, created_at=t, sent_at=t,
                        idempotency_key=key, fingerprint=fingerprint)
        with _store():
            job, created = self.jobs.submit(job, documents)
        headers = {"Location": f"{request.script_root}/v1/jobs/{job.id}"}
        if not created:
            if job.fingerprint != fingerprint:
                raise IdempotencyKeyReused(
                    f"{IDEMPOTENCY_HEADER} {key!r} was used for job {job.id} with a different "
                    "model or body; use a new key for a new job.")
            headers["Idempotent-Replayed"] = "true"
        else:
            metrics.JOBS.labels(spec.name, "accepted").inc()
        return json_response(job_document(job), 202, headers)

    def _idempotency_key(self) -> str | None:
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if key is None:
            return None
        if not 1 <= len(key) <= 255 or not all(33 <= ord(c) <= 126 for c in key):
            raise InvalidInput(
                f"{IDEMPOTENCY_HEADER} must be 1 to 255 visible ASCII characters, such as a "
                "UUID.", errors=[{"loc": ["header", IDEMPOTENCY_HEADER],
                                  "msg": "String should be 1 to 255 visible ASCII characters",
                                  "type": "string_pattern_mismatch"}])
        return key

    def _find(self, job_id: str) -> JobRecord:
        with _store():
            job = self.jobs.store.get(job_id) if looks_like_job_id(job_id) else None
        if job is None:
            raise JobNotFound(f"No job {job_id!r}: it never existed, or it finished more than "
                              f"{self.settings.job_ttl:g} s ago and its result was removed.")
        return job

    def get(self, job_id: str) -> Response:
        job = self._find(job_id)
        wait = self._wait()
        if wait > 0 and not job.finished and self._waiters.acquire(blocking=False):
            try:
                self.jobs.watch.wait(job_id, wait)
            finally:
                self._waiters.release()
            job = self._find(job_id)
        return json_response(job_document(job))

    def _wait(self) -> float:
        raw = request.args.get("wait")
        if raw is None:
            return 0.0
        limit = self.settings.job_max_wait
        value = parse_seconds(raw, ["query", "wait"], "wait")
        if not 0 <= value <= limit:
            raise InvalidInput(
                f"wait must be a number of seconds from 0 to {limit:g}; got {raw!r}.",
                errors=[{"loc": ["query", "wait"],
                         "msg": f"Input should be a number from 0 to {limit:g}",
                         "type": "less_than_equal"}])
        return value

    def cancel(self, job_id: str) -> Response:
        job = self._find(job_id)
        if not job.finished:
            with _store():
                cancelled = self.jobs.store.finish(job_id, "cancelled", None, None, now(),
                                                   self.settings.job_ttl)
            if cancelled is not None:
                metrics.JOBS.labels(job.model, "cancelled").inc()
                return json_response(job_document(cancelled))
            job = self._find(job_id)
        raise JobFinished(f"Job {job_id} has already {job.status}; only a queued or running "
                          "job can be cancelled.")
