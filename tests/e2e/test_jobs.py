"""Jobs on the embedded backend, against real `corral serve` process trees."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import APPS, ServerProcess, start_server
from tests.proctree import descendants

pytestmark = pytest.mark.slow

APP = str(APPS / "jobs.py")


def kill_tree(server: ServerProcess,
              roles: frozenset[str] | set[str] = frozenset({"jobs", "dispatcher", "replica",
                                                            "http"})) -> None:
    """kill -9 every process of a server at once: nothing gets to clean up."""
    os.kill(server.proc.pid, signal.SIGSTOP)  # the supervisor restarts nothing meanwhile
    tree = descendants(server.proc.pid)
    assert roles <= {p.role for p in tree}, tree
    for p in tree:
        os.kill(p.pid, signal.SIGKILL)
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)


def submit(server: ServerProcess, body: Any, model: str = "sum",
           headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(f"{server.url}/v1/models/{model}/jobs", json=body, headers=headers,
                         timeout=10)


def wait_finished(server: ServerProcess, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = requests.get(f"{server.url}/v1/jobs/{job_id}", params={"wait": 5}, timeout=15)
        assert resp.status_code == 200, resp.text
        job: dict[str, Any] = resp.json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
    raise AssertionError(f"job {job_id} did not finish: {job}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    directory = tmp_path_factory.mktemp("jobs")
    record = directory / "computed.txt"
    server = start_server(directory, APP, "--workers", "2",
                          env={"SUM_RECORD_FILE": str(record), "CORRAL_JOB_CONCURRENCY": "4"})
    server.record = record  # type: ignore[attr-defined]
    yield server
    server.stop()


def test_submit_then_long_poll_gives_the_predict_answer(server: ServerProcess) -> None:
    body = [{"values": [1, 2]}, {"values": [3, 4, 5]}]
    resp = submit(server, body)
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["status"] in ("queued", "running", "succeeded")
    assert resp.headers["Location"] == f"/v1/jobs/{job['id']}" == job["links"]["self"]
    assert job["progress"]["total"] == 2 and len(job["id"]) >= 22
    started = time.monotonic()
    done = requests.get(f"{server.url}{resp.headers['Location']}", params={"wait": 20},
                        timeout=30).json()
    assert time.monotonic() - started < 10  # answered when it finished, not after 20 s
    assert done["status"] == "succeeded", done
    assert [r["total"] for r in done["result"]] == [3, 12]
    assert done["progress"] == {"done": 2, "total": 2}
    assert done["started_at"] and done["finished_at"] and done["expires_at"]
    predicted = requests.post(f"{server.url}/v1/models/sum/predict", json=body, timeout=10)
    assert [r["total"] for r in predicted.json()] == [r["total"] for r in done["result"]]

    one = submit(server, {"values": [7]}).json()
    assert wait_finished(server, one["id"])["result"]["total"] == 7  # an object, not an array


def test_versioned_path_and_unknown_model(server: ServerProcess) -> None:
    resp = requests.post(f"{server.url}/v1/models/sum/versions/1/jobs", json={"values": [1]},
                         timeout=10)
    assert resp.status_code == 202 and resp.json()["version"] == "1"
    missing = requests.post(f"{server.url}/v1/models/nope/jobs", json={"values": [1]},
                            timeout=10)
    assert missing.status_code == 404 and missing.json()["type"] == "model-not-found"


def jobs_stored(server: ServerProcess) -> int:
    db = sqlite3.connect(Path(server.log_path).parent / ".corral" / "jobs.sqlite3")
    try:
        return int(db.execute("SELECT count(*) FROM jobs").fetchone()[0])
    finally:
        db.close()


def test_bad_input_is_refused_at_submit_and_nothing_is_queued(server: ServerProcess) -> None:
    submit(server, {"values": [1]})  # the store exists
    stored = jobs_stored(server)
    before = server.record.read_text() if server.record.exists() else ""  # type: ignore[attr-defined]
    resp = submit(server, [{"values": [1]}, {"values": "x"}])
    assert resp.status_code == 422
    problem = resp.json()
    assert problem["type"] == "validation-error" and problem["errors"][0]["loc"][0] == 1
    bad_json = requests.post(f"{server.url}/v1/models/sum/jobs", data=b"{",
                             headers={"Content-Type": "application/json"}, timeout=10)
    assert bad_json.status_code == 400 and bad_json.json()["type"] == "invalid-json"
    empty = submit(server, [])
    assert empty.status_code == 422
    assert jobs_stored(server) == stored  # none of them was stored, to fail later
    after = server.record.read_text() if server.record.exists() else ""  # type: ignore[attr-defined]
    assert "'x'" not in after[len(before):]


def test_unknown_and_malformed_ids_are_404(server: ServerProcess) -> None:
    for job_id in ("A" * 22, "x", "../../etc/passwd", "%00" * 10):
        for method in ("GET", "DELETE"):
            resp = requests.request(method, f"{server.url}/v1/jobs/{job_id}", timeout=10)
            assert resp.status_code == 404, (method, job_id, resp.text)
            assert resp.json()["type"] in ("job-not-found", "not-found")
    resp = requests.get(f"{server.url}/v1/jobs/{'A' * 22}", timeout=10)
    assert resp.json()["type"] == "job-not-found"


@pytest.mark.parametrize("wait", ["-1", "abc", "nan", "1e9", "31", "inf", "0x10"])
def test_bad_wait_is_422(server: ServerProcess, wait: str) -> None:
    job = submit(server, {"values": [1]}).json()
    resp = requests.get(f"{server.url}/v1/jobs/{job['id']}", params={"wait": wait}, timeout=10)
    assert resp.status_code == 422, resp.text
    assert resp.json()["errors"][0]["loc"] == ["query", "wait"]


def test_idempotency_key_returns_the_same_job(server: ServerProcess) -> None:
    key = f"key-{time.time_ns()}"
    first = submit(server, [{"values": [1]}], headers={"Idempotency-Key": key})
    again = submit(server, [{"values": [1]}], headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers
    other = submit(server, [{"values": [2]}], headers={"Idempotency-Key": key})
    assert other.status_code == 409 and other.json()["type"] == "idempotency-key-reused"
    elsewhere = submit(server, [{"values": [1]}], model="sum-items",
                       headers={"Idempotency-Key": key})
    assert elsewhere.status_code == 202 and elsewhere.json()["id"] != first.json()["id"]
    bad = submit(server, {"values": [1]}, headers={"Idempotency-Key": "x" * 300})
    assert bad.status_code == 422 and bad.json()["errors"][0]["loc"] == [
        "header", "Idempotency-Key"]


def test_cancel_a_queued_job_it_is_never_computed(server: ServerProcess) -> None:
    # Four slow jobs hold the runner (CORRAL_JOB_CONCURRENCY=4) busy...
    blockers = [submit(server, [{"values": [900 + i], "delay": 1.5}] * 2).json()
                for i in range(4)]
    marker = 424242.5
    job = submit(server, {"values": [marker]}).json()
    resp = requests.delete(f"{server.url}/v1/jobs/{job['id']}", timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "cancelled"
    again = requests.delete(f"{server.url}/v1/jobs/{job['id']}", timeout=10)
    assert again.status_code == 409 and again.json()["type"] == "job-finished"
    got = requests.get(f"{server.url}/v1/jobs/{job['id']}", timeout=10).json()
    assert got["status"] == "cancelled" and "result" not in got
    for b in blockers:
        assert wait_finished(server, b["id"])["status"] == "succeeded"
    finished = submit(server, {"values": [1]}).json()
    wait_finished(server, finished["id"])
    assert requests.delete(f"{server.url}/v1/jobs/{finished['id']}",
                           timeout=10).status_code == 409
    assert str(marker) not in server.record.read_text()  # type: ignore[attr-defined]


def test_cancel_a_running_array_job_stops_it(server: ServerProcess) -> None:
    body = [{"values": [5000 + i], "delay": 0.3} for i in range(40)]  # 5 slices of 8
    job = submit(server, body).json()
    deadline = time.monotonic() + 20
    while requests.get(f"{server.url}/v1/jobs/{job['id']}", timeout=10).json()[
            "progress"]["done"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert requests.delete(f"{server.url}/v1/jobs/{job['id']}", timeout=10).status_code == 200
    time.sleep(2.0)
    computed = [line for line in server.record.read_text().splitlines()  # type: ignore[attr-defined]
                if line.startswith("[50")]
    assert 0 < len(computed) < 40


def test_results_expire(serve: Any) -> None:
    server = serve(APP, env={"CORRAL_JOB_TTL": "1.5"})
    job = submit(server, {"values": [1]}).json()
    done = wait_finished(server, job["id"])
    assert done["status"] == "succeeded"
    assert resp_ok(server, job["id"])
    time.sleep(2.0)
    resp = requests.get(f"{server.url}/v1/jobs/{job['id']}", timeout=10)
    assert resp.status_code == 404 and resp.json()["type"] == "job-not-found"
    assert "1.5 s ago" in resp.json()["detail"]


def resp_ok(server: ServerProcess, job_id: str) -> bool:
    return requests.get(f"{server.url}/v1/jobs/{job_id}", timeout=10).status_code == 200


def test_array_job_larger_than_the_live_queue_bound(server: ServerProcess) -> None:
    body = [{"values": [i]} for i in range(200)]  # max_queue is 64 for live requests
    job = submit(server, body).json()
    done = wait_finished(server, job["id"])
    assert done["status"] == "succeeded"
    assert [r["total"] for r in done["result"]] == list(range(200))
    assert max(r["batch_size"] for r in done["result"]) > 1  # computed in batches


def test_failing_item_fails_the_job_naming_it(server: ServerProcess) -> None:
    job = submit(server, [{"values": [1]}, {"values": [2], "poison": True}]).json()
    done = wait_finished(server, job["id"])
    assert done["status"] == "failed" and "result" not in done
    assert done["error"]["type"] == "model-error" and done["error"]["item"] == 1
    assert "secret" not in json.dumps(done)
    per_item = submit(server, [{"values": [1]}, {"values": [2], "reject": True}],
                      model="sum-items").json()
    done = wait_finished(server, per_item["id"])
    assert done["status"] == "succeeded"
    assert done["result"][0]["total"] == 1
    assert done["result"][1]["type"] == "validation-error" and done["result"][1]["item"] == 1


def test_live_requests_are_not_refused_while_a_big_job_runs(server: ServerProcess) -> None:
    job = submit(server, [{"values": [i], "delay": 0.05} for i in range(300)]).json()
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda i: requests.post(
            f"{server.url}/v1/models/sum/predict", json={"values": [i]}, timeout=30
        ).status_code, range(64)))
    assert codes == [200] * 64  # the job's 300 inputs do not count against max_queue 64
    assert wait_finished(server, job["id"])["status"] == "succeeded"


def test_metrics_count_jobs(server: ServerProcess) -> None:
    def count(status: str) -> float:
        text = requests.get(f"{server.url}/metrics", timeout=10).text
        line = f'corral_jobs_total{{model="sum",status="{status}"}}'
        return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(line))

    accepted, succeeded = count("accepted"), count("succeeded")
    job = submit(server, {"values": [1]}).json()
    wait_finished(server, job["id"])
    assert count("accepted") == accepted + 1
    assert count("succeeded") == succeeded + 1


def test_a_thousand_jobs_none_lost(server: ServerProcess) -> None:
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda i: submit(server, {"values": [i]}).json()["id"],
                            range(1000)))
    assert len(set(ids)) == 1000
    deadline = time.monotonic() + 120
    pending = set(ids)
    results: dict[str, float] = {}
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            job = requests.get(f"{server.url}/v1/jobs/{job_id}", timeout=10).json()
            if job["status"] == "succeeded":
                results[job_id] = job["result"]["total"]
                pending.discard(job_id)
            else:
                assert job["status"] in ("queued", "running"), job
        time.sleep(0.2)
    assert not pending, f"{len(pending)} jobs not finished"
    assert sorted(results[i] for i in ids) == list(range(1000))


def test_kill_9_the_whole_tree_every_accepted_job_finishes(tmp_path: Path) -> None:
    record = tmp_path / "computed.txt"
    env = {"SUM_RECORD_FILE": str(record), "CORRAL_JOB_LEASE": "3"}
    first = start_server(tmp_path, APP, env=env)
    running = submit(first, [{"values": [100 + i], "delay": 2.0} for i in range(3)]).json()
    queued = [submit(first, {"values": [200 + i], "delay": 0.5}).json() for i in range(12)]
    deadline = time.monotonic() + 20
    while not record.exists() or "[100" not in record.read_text():
        assert time.monotonic() < deadline, first.log()
        time.sleep(0.05)
    kill_tree(first)
    time.sleep(0.5)
    again = start_server(tmp_path, APP, env=env)
    try:
        for job in [running, *queued]:
            done = wait_finished(again, job["id"], timeout=90)
            assert done["status"] == "succeeded", done
        assert [r["total"] for r in wait_finished(again, running["id"])["result"]] == [
            100, 101, 102]
        assert wait_finished(again, running["id"])["attempts"] >= 2
    finally:
        again.stop()


def test_slices_answered_out_of_order_by_two_replicas(serve: Any) -> None:
    server = serve(APP, env={"CORRAL_MODELS__SUM__REPLICAS": "2"})
    # Slice 1 (8 inputs) is slow, slice 2 fast: with two replicas slice 2 is answered
    # first, on the same runner thread that waits for slice 1.
    body = ([{"values": [i], "delay": 1.5} for i in range(8)]
            + [{"values": [i]} for i in range(8, 24)])
    job = submit(server, body).json()
    started = time.monotonic()
    done = wait_finished(server, job["id"], timeout=30)
    assert done["status"] == "succeeded", done
    assert [r["total"] for r in done["result"]] == list(range(24))
    assert len({r["pid"] for r in done["result"]}) == 2
    assert time.monotonic() - started < 10  # not the job timeout


def test_stopping_the_server_gives_running_jobs_back(tmp_path: Path) -> None:
    first = start_server(tmp_path, APP)
    job = submit(first, [{"values": [i], "delay": 1.0} for i in range(32)]).json()
    deadline = time.monotonic() + 20
    while requests.get(f"{first.url}/v1/jobs/{job['id']}", timeout=10).json()[
            "progress"]["done"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert first.stop() == 0  # SIGTERM: a deploy, not a crash
    again = start_server(tmp_path, APP)
    try:
        done = wait_finished(again, job["id"], timeout=60)
        assert done["status"] == "succeeded"
        assert done["attempts"] == 1  # given back, not counted as a failed attempt
        assert [r["total"] for r in done["result"]] == list(range(32))
    finally:
        again.stop()


def test_a_job_past_its_timeout_fails_with_a_timeout(serve: Any) -> None:
    server = serve(APP, env={"CORRAL_JOB_TIMEOUT": "1.5"})
    job = submit(server, [{"values": [1], "delay": 4}]).json()
    done = wait_finished(server, job["id"])
    assert done["status"] == "failed", done
    assert done["error"]["type"] == "timeout" and "1.5 s" in done["error"]["detail"]


def test_an_input_that_kills_its_replica_fails_the_job_after_capped_tries(serve: Any,
                                                                          tmp_path: Path) -> None:
    record = tmp_path / "computed.txt"
    server = serve(APP, env={"CORRAL_JOB_MAX_ATTEMPTS": "2", "SUM_RECORD_FILE": str(record)})
    job = submit(server, [{"values": [1]}, {"values": [31337], "die": True}]).json()
    done = wait_finished(server, job["id"], timeout=60)
    assert done["status"] == "failed", done
    assert done["error"]["type"] == "worker-crashed"
    assert done["attempts"] == 1  # the job's runner did not die: the slice was tried twice
    assert record.read_text().count("[31337.0]") == 2
    assert wait_finished(server, submit(server, {"values": [2]}).json()["id"])[
        "status"] == "succeeded"  # the replica was replaced; other work goes on


def test_long_polls_take_at_most_half_the_threads(serve: Any) -> None:
    server = serve(APP, "--threads", "2")  # one long-poll at a time in its one worker
    job = submit(server, [{"values": [1], "delay": 3}]).json()
    url = f"{server.url}/v1/jobs/{job['id']}"

    def poll(delay: float) -> tuple[float, str]:
        time.sleep(delay)
        started = time.monotonic()
        status = requests.get(url, params={"wait": 10}, timeout=20).json()["status"]
        return time.monotonic() - started, status

    with ThreadPoolExecutor(2) as pool:
        waiting = pool.submit(poll, 0.0)
        second = pool.submit(poll, 0.5)  # the first holds the only long-poll slot
        (waited, final), (answered, current) = waiting.result(), second.result()
    assert final == "succeeded" and waited > 1.5
    assert current in ("queued", "running") and answered < 1.0  # answered at once


def test_two_instances_share_one_data_directory(tmp_path: Path) -> None:
    data = tmp_path / "shared-data"
    env = {"CORRAL_DATA_DIR": str(data)}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = start_server(tmp_path / "a", APP, env=env)
    b = start_server(tmp_path / "b", APP, env=env)
    try:
        jobs = [submit(a, {"values": [i]}).json() for i in range(20)]
        for job in jobs:
            done = wait_finished(b, job["id"])  # read from the other instance
            assert done["status"] == "succeeded"
        # Computed by either instance's replica, each job once.
        assert all(wait_finished(a, j["id"])["attempts"] == 1 for j in jobs)
    finally:
        a.stop()
        b.stop()
