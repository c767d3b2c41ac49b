"""Jobs with models in-process (a WSGI server without Corral's process tree)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import corral
from corral.config import Settings
from tests.conftest import wait_client_ready
from tests.fixtures import EchoV1Model, SumModel


def make(tmp_path: Path, *models: type[corral.Model]) -> Any:
    app = corral.Server(list(models)).create_app(Settings(data_dir=str(tmp_path),
                                                          warm_up=False))
    client = app.test_client()
    wait_client_ready(client)
    return app, client


def finished(client: Any, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}?wait=2").get_json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
    raise AssertionError(job)


def test_a_job_runs_in_the_serving_process(tmp_path: Path) -> None:
    def runners() -> int:
        return sum(t.name == "corral-jobs" for t in threading.enumerate())

    before = runners()
    app, client = make(tmp_path, SumModel)
    try:
        assert runners() == before  # no job yet: no jobs thread
        resp = client.post("/v1/models/sum/jobs", data=json.dumps(
            [{"values": [i]} for i in range(20)]), content_type="application/json")
        assert resp.status_code == 202, resp.get_json()
        assert runners() == before + 1
        job = finished(client, resp.get_json()["id"])
        assert job["status"] == "succeeded"
        assert [r["total"] for r in job["result"]] == list(range(20))
    finally:
        app.extensions["corral.engine"].stop()


def test_jobs_left_queued_run_when_the_app_starts_again(tmp_path: Path) -> None:
    # A job stored by a process that died before running it (same data directory).
    app, client = make(tmp_path, EchoV1Model)
    service = app.extensions["corral.jobs"]
    from corral.jobs.records import JobRecord, new_job_id

    orphan = JobRecord(id=new_job_id(), model="echo", version="1", total=1, is_batch=False,
                       per_item_errors=False, created_at=time.time(), sent_at=time.time())
    service.store.create(orphan, [b'{"word":"hi"}'])  # stored, never sent to a runner
    app.extensions["corral.engine"].stop()
    again, client2 = make(tmp_path, EchoV1Model)
    try:
        client2.get("/healthz")  # the first request starts the engine and, with work, jobs
        job = finished(client2, orphan.id)
        assert job["status"] == "succeeded" and job["result"] == {"upper": "HI"}
    finally:
        again.extensions["corral.engine"].stop()


def test_jobs_of_models_this_app_does_not_serve_are_left_alone(tmp_path: Path) -> None:
    app, client = make(tmp_path, SumModel)
    other, other_client = make(tmp_path, EchoV1Model)  # shares the data directory
    try:
        resp = other_client.post("/v1/models/echo/jobs", data=json.dumps({"word": "a"}),
                                 content_type="application/json")
        job_id = resp.get_json()["id"]
        client.post("/v1/models/sum/jobs", data=json.dumps({"values": [1]}),
                    content_type="application/json")  # starts the sum app's runner too
        job = finished(client, job_id)  # readable from either app
        assert job["status"] == "succeeded" and job["result"] == {"upper": "A"}
    finally:
        app.extensions["corral.engine"].stop()
        other.extensions["corral.engine"].stop()


def test_a_job_whose_runners_died_too_often_fails_without_running(tmp_path: Path) -> None:
    from corral.jobs.records import JobRecord, new_job_id
    from corral.jobs.runner import JobRunner, RunnerSettings
    from corral.jobs.sqlite import SQLiteJobStore

    store = SQLiteJobStore(tmp_path)
    t = time.time()
    job = JobRecord(id=new_job_id(), model="sum", version="1", total=1, is_batch=False,
                    per_item_errors=False, created_at=t, sent_at=t)
    store.create(job, [b'{"values":[1]}'])
    for attempt in range(3):  # three runners took it and died (their leases ran out)
        assert store.start(job.id, f"dead-{attempt}", 1, t + 10 * attempt) is not None
    taken = store.start(job.id, "me", 1, t + 40)
    assert taken is not None and taken.attempts == 4

    class NoEngine:  # the job must not be computed again
        def submit(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("computed a job that ran out of attempts")

    settings = RunnerSettings(lease=30, keep=60, max_attempts=3, timeout=10,
                              slice_size=lambda key: 8, decode=lambda key, doc: doc)  # type: ignore[arg-type,return-value]
    finished = JobRunner(store, NoEngine(), settings, "me").run(taken)  # type: ignore[arg-type]
    assert finished is not None and finished.status == "failed"
    assert finished.error is not None and finished.error["type"] == "worker-crashed"
    assert "started 3 times" in finished.error["detail"]
    store.close()
