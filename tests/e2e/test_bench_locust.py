"""The generated locustfile run for real: Locust, headless, against `corral serve`.

Locust runs as a subprocess (the venv's `locust`), so its gevent monkey-patching and
warnings stay out of the test process. Its final statistics are read from
``--json-file``; the ``--csv`` files, written on a timer, may miss the last second, and
are read only for the failure messages, which the JSON leaves out.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.conftest import APPS, ROOT, ServerProcess, free_port

# corral.bench is imported inside each test, not here: see tests/unit/test_bench_locustfile.py.

pytestmark = pytest.mark.slow

LOCUST = str(Path(sys.executable).with_name("locust"))
QUICKSTART = str(ROOT / "examples" / "quickstart.py")
Serve = Callable[..., ServerProcess]


@dataclass
class LocustRun:
    returncode: int
    output: str
    stats: dict[str, dict[str, Any]]  # request name -> Locust's entry for it
    failure_messages: str  # Locust's failures CSV

    def requests(self, name: str) -> int:
        return int(self.stats[name]["num_requests"]) if name in self.stats else 0

    def failures(self, name: str) -> int:
        return int(self.stats[name]["num_failures"]) if name in self.stats else 0


def run_locust(tmp_path: Path, source: str, seconds: int = 5) -> LocustRun:
    """Write ``source`` as a locustfile and run it headless with 8 users."""
    path = tmp_path / "locustfile.py"
    path.write_text(source, encoding="utf-8")
    proc = subprocess.run(
        [LOCUST, "-f", str(path), "--headless", "-u", "8", "-r", "8", "-t", f"{seconds}s",
         "--only-summary", "--json-file", str(tmp_path / "stats"),
         "--csv", str(tmp_path / "locust")],
        cwd=tmp_path, capture_output=True, text=True, timeout=seconds + 60)
    output = proc.stdout + proc.stderr
    stats_path = tmp_path / "stats.json"
    assert stats_path.exists(), output
    entries = json.loads(stats_path.read_text())
    failures = tmp_path / "locust_failures.csv"
    return LocustRun(proc.returncode, output, {e["name"]: e for e in entries},
                     failures.read_text() if failures.exists() else "")


def test_the_generated_locustfile_passes_against_a_healthy_server(
        serve: Serve, tmp_path: Path) -> None:
    from corral.bench.locustfile import locustfile_text
    from corral.bench.target import describe_url

    server = serve(QUICKSTART)
    models = describe_url(server.url)
    assert [m.name for m in models] == ["iris", "text-stats"]
    run = run_locust(tmp_path, locustfile_text(models, server.url, invalid_share=0.2))
    assert run.returncode == 0, run.output
    for model in models:
        assert run.requests(model.predict_path) > 0, run.output
        assert run.failures(model.predict_path) == 0, run.output
        # the invalid bodies were sent, answered 422, and counted as successes
        assert run.requests(model.predict_path + " (invalid)") > 0, run.output
        assert run.failures(model.predict_path + " (invalid)") == 0, run.output
    assert sum(run.requests(m.jobs_path) for m in models) > 0, run.output
    assert run.requests("/v1/jobs/[id]") > 0, run.output
    assert sum(e["num_failures"] for e in run.stats.values()) == 0, run.output


def test_failing_predictions_make_locust_exit_non_zero(serve: Serve, tmp_path: Path) -> None:
    from corral.bench.locustfile import locustfile_text
    from corral.bench.target import describe_url, pick

    server = serve(str(APPS / "jobs.py"))
    models = pick(describe_url(server.url), ["sum"])
    poisoned = [b'{"values":[1,2],"poison":true}']  # SumModel raises: 500 model-error
    source = locustfile_text(models, server.url, invalid_share=0.2, bodies={"sum": poisoned})
    run = run_locust(tmp_path, source, seconds=5)
    assert run.returncode == 1, run.output
    path = models[0].predict_path
    assert run.failures(path) == run.requests(path) > 0, run.output
    assert run.failures(path + " (invalid)") == 0, run.output  # still a 422
    # the failure names the status and quotes the problem document
    assert "500: " in run.failure_messages and "model-error" in run.failure_messages
    # the jobs were accepted (202: the input is valid), then failed: a failure too
    assert run.failures(models[0].jobs_path) == 0 < run.requests(models[0].jobs_path)
    assert run.failures("/v1/jobs/[id]") > 0 and "job failed" in run.failure_messages


def test_a_server_that_is_down_fails_the_run(tmp_path: Path) -> None:
    from corral.bench.locustfile import locustfile_text
    from corral.bench.target import describe_app

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    run = run_locust(tmp_path, locustfile_text(describe_app(QUICKSTART), url), seconds=2)
    assert run.returncode == 1, run.output
    assert all(e["num_failures"] == e["num_requests"] for e in run.stats.values())
    assert "no answer (" in run.failure_messages  # not a bare status 0


def test_the_app_file_and_its_running_server_give_the_same_locustfile(
        serve: Serve) -> None:
    from corral.bench.locustfile import locustfile_text
    from corral.bench.target import describe_app, describe_url

    server = serve(QUICKSTART)
    from_url = locustfile_text(describe_url(server.url), server.url)
    from_app = locustfile_text(describe_app(QUICKSTART), server.url)
    assert from_app == from_url
