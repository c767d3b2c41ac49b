"""Schemathesis against a live server: no 5xx, nothing outside the documented schema."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import requests

from tests.conftest import APPS, ROOT, ServerProcess

pytestmark = pytest.mark.slow

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")


@pytest.mark.parametrize("worker_class", ["gthread", "gevent"])
def test_schemathesis_finds_nothing(serve: Callable[..., ServerProcess], tmp_path: Path,
                                    worker_class: str) -> None:
    # Schemathesis sends arrays of up to 1024 inputs with deadlines down to 0.1 s. Small
    # batches would make a correct 504 likely (sixteen of iris's 64 take about 85 ms here,
    # more while the jobs it also submits run), so the models batch widely here.
    batching = {f"CORRAL_MODELS__{m}__MAX_SIZE": "256" for m in ("ECHO", "TEXT_STATS", "IRIS")}
    server = serve(str(APPS / "fuzz.py"), "--worker-class", worker_class, env=batching)
    result = subprocess.run(
        # All checks but two. use_after_free: DELETE /v1/jobs/{id} cancels a job, and the
        # job stays readable (status "cancelled") until its result expires, by design.
        # not_a_server_error is replaced by tests/schemathesis_hooks.py: every 5xx fails
        # the run except a 504 "timeout" to a request whose own X-Request-Timeout passed.
        [SCHEMATHESIS, "run", f"{server.url}/openapi.json", "--checks", "all",
         "--exclude-checks", "use_after_free,not_a_server_error",
         "--max-examples", "40", "--workers", "1", "--seed", "1", "--no-color"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT),
             "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks"},
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-8000:]
    # A clean run ends "No issues found", or with warnings only (random job ids are 404s).
    assert "Failures:" not in report and "failure" not in report.splitlines()[-1], \
        report[-4000:]
    # Every operation of the document was exercised, not skipped (schemathesis leaves
    # out the operation that serves the schema it is reading, /openapi.json).
    paths = requests.get(f"{server.url}/openapi.json", timeout=10).json()["paths"]
    operations = sum(len(methods) for methods in paths.values()) - 1
    assert operations > 10 and f"Tested: {operations}\n" in report, report[-4000:]
