"""`corral bench` and `corral wrk-script` against real servers, with wrk and with the
built-in generator: the numbers the report shows agree with what the server counted."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import APPS, CORRAL, ROOT, ServerProcess, free_port, start_server

pytestmark = pytest.mark.slow

QUICKSTART = str(ROOT / "examples" / "quickstart.py")
SUM_APP = str(APPS / "echo_only.py")
SHORT = ["-d", "2s", "--warmup", "0.5s", "-q"]
WRK = shutil.which("wrk")


def bench(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CORRAL, "bench", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(tmp_path_factory.mktemp("bench-server"), QUICKSTART)
    yield server
    server.stop()


def server_count(server: ServerProcess, model: str) -> dict[str, float]:
    """corral_requests_total of ``model`` by status, read directly from /metrics."""
    out: dict[str, float] = {}
    for line in requests.get(server.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("corral_requests_total{") and f'model="{model}"' in line:
            status = line.split('status="')[1].split('"')[0]
            out[status] = out.get(status, 0) + float(line.rsplit(" ", 1)[1])
    return out


def check_plausible(run: dict[str, Any]) -> None:
    lat = run["latency_ms"]
    assert run["requests"] > 0 and run["rps"] > 0
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    pcts = [ms for _, ms in run["percentiles"]]
    assert pcts == sorted(pcts) and pcts[-1] == pytest.approx(lat["max"], rel=0.01)
    side = run["server"]
    assert side["batches"] > 0 and sum(side["batch_hist"].values()) == side["batches"]
    assert 1 <= side["batch_mean"] <= 64
    assert side["queue_wait_ms_mean"] >= 0 and side["predict_ms_mean"] > 0


def test_builtin_generator_counts_what_the_server_counts(tmp_path: Path) -> None:
    """An app target: started, measured at two levels, stopped. Every request the built-in
    generator counted, the server counted too (its /metrics), and nothing else."""
    out = tmp_path / "out.json"
    done = bench(QUICKSTART, "-m", "iris", "-c", "1,8", "--generator", "builtin",
                 "--json", str(out), "-d", "2s", "--warmup", "0.5s", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    assert doc["format"] == "corral-bench/1" and doc["target"]["kind"] == "app"
    assert doc["generator"]["name"] == "built-in" and doc["generator"]["mode"] == "closed"
    assert [(r["model"], r["concurrency"]) for r in doc["runs"]] == [("iris", 1), ("iris", 8)]
    for run in doc["runs"]:
        check_plausible(run)
        assert run["statuses"] == {"200": run["requests"]} and run["errors"] == 0
        assert run["server"]["requests"] == run["requests"]
        assert run["server"]["statuses"] == {"200": run["requests"]}
        assert run["server"]["cpu_ms_per_request"] > 0  # the server bench started
        assert 0 < run["generator_cores"] < 2
    # The table printed per level, and the server was stopped (nothing left listening).
    assert "iris" in done.stdout and "1 conn " in done.stdout and "8 conns" in done.stdout
    assert "Load generator: built-in" in done.stdout
    # The progress bar (on standard error) showed each level with the generator's live count.
    assert re.search(r"iris · 8 conns .* [\d,]+ req/s, 0 failed", done.stderr), done.stderr
    port = int(doc["target"]["url"].rsplit(":", 1)[1])
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


@pytest.mark.skipif(WRK is None, reason="wrk is not installed (the test line installs it)")
def test_wrk_against_a_running_server(tmp_path: Path, quickstart: ServerProcess) -> None:
    """A URL target under wrk: the server's count of the measured window equals the
    client's, plus at most one request per connection that wrk dropped when it stopped."""
    before = server_count(quickstart, "text-stats")
    out = tmp_path / "wrk.json"
    done = bench(quickstart.url, "-m", "text-stats", "-c", "4", "--generator", "wrk",
                 "--json", str(out), *SHORT, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    (run,) = doc["runs"]
    assert doc["generator"]["name"] == "wrk" and doc["target"]["kind"] == "url"
    check_plausible(run)
    side = run["server"]
    assert 0 <= side["requests"] - run["requests"] <= 4
    assert side["cpu_ms_per_request"] is None  # not a server bench started
    # The server's own count over the whole command (warm-up and preflight included)
    # is at least what the report attributes to the measured window.
    after = server_count(quickstart, "text-stats")
    assert sum(after.values()) - sum(before.values()) >= side["requests"] + 1


def test_open_loop_sends_on_schedule(tmp_path: Path, quickstart: ServerProcess) -> None:
    out = tmp_path / "open.json"
    done = bench(quickstart.url, "-m", "iris", "--rate", "50", "--json", str(out), *SHORT,
                 cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (run,) = json.loads(out.read_text())["runs"]
    assert run["mode"] == "open" and run["rate"] == 50
    assert run["requests"] == 100  # due every 20 ms for 2 s
    assert run["server"]["requests"] == 100
    assert 40 <= run["sent_rate"] <= 50


def test_open_loop_shows_a_stall_instead_of_hiding_it(tmp_path: Path) -> None:
    """A model that computes 20 inputs/s, asked for 60/s over 4 connections: a closed-loop
    tester would slow down with the server and report ~200 ms; the open loop counts from
    when each request was due, so the backlog shows, and the report says the rate was
    not kept and why."""
    payloads = tmp_path / "slow.jsonl"
    payloads.write_text('{"values": [1], "delay": 0.05}\n')
    out = tmp_path / "stall.json"
    server = start_server(tmp_path, SUM_APP, env={"CORRAL_MODELS__SUM__MAX_SIZE": "1"})
    try:
        done = bench(server.url, "-m", "sum", "--rate", "60", "--max-connections", "4",
                     "--payloads", str(payloads), "--json", str(out), "-d", "2s",
                     "--warmup", "0", "-q", cwd=tmp_path)
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    (run,) = doc["runs"]
    assert run["kept_rate"] is False and run["connections"] == 4
    assert run["requests"] == 120 and run["errors"] == 0
    assert run["latency_ms"]["p99"] > 2000  # the last requests waited for the backlog
    assert any("rate was not kept" in n and "connections was busy" in n for n in doc["notes"])
    assert "60/s *" in done.stdout and "* rate not kept" in done.stdout


def test_find_max_reports_a_rate_within_the_target(tmp_path: Path,
                                                   quickstart: ServerProcess) -> None:
    out = tmp_path / "max.json"
    done = bench(quickstart.url, "-m", "text-stats", "--find-max", "--slo-p99", "250ms",
                 "-c", "8", "-d", "1s", "--warmup", "0", "-q", "--json", str(out),
                 cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    found = doc["find_max"]["text-stats"]
    steps = found["steps"]
    assert 2 <= len(steps) <= 7 and doc["runs"][0]["concurrency"] == 8  # the probe
    met = [s["rate"] for s in steps if s["meets_slo"]]
    assert found["best_rate"] == (max(met) if met else None)
    for step in steps:  # each verdict follows from its own numbers
        assert step["meets_slo"] == (step["latency_ms"]["p99"] <= 250
                                     and step["sent_share"] >= 0.99
                                     and step["errors"] <= 0.01 * step["requests"])
    assert "highest rate with p99 <= 250 ms" in done.stdout


def test_compare_exits_non_zero_past_the_threshold(tmp_path: Path) -> None:
    run = {"model": "iris", "mode": "closed", "concurrency": 16, "rate": None,
           "requests": 1000, "rps": 100.0, "errors": 0,
           "latency_ms": {"p50": 10.0, "p99": 40.0},
           "statuses": {"200": 1000}, "socket_errors": {}}
    old = {"format": "corral-bench/1", "runs": [run]}
    slower = {"format": "corral-bench/1",
              "runs": [dict(run, rps=80.0, latency_ms={"p50": 10.5, "p99": 41.0})]}
    same = {"format": "corral-bench/1", "runs": [dict(run, rps=97.0)]}
    for name, doc in (("old", old), ("slower", slower), ("same", same)):
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    regressed = bench("--compare", "old.json", "slower.json", cwd=tmp_path)
    assert regressed.returncode == 1, regressed.stdout + regressed.stderr
    assert "REGRESSED" in regressed.stdout and "-20.0%" in regressed.stdout
    fine = bench("--compare", "old.json", "same.json", "--threshold", "5%", cwd=tmp_path)
    assert fine.returncode == 0, fine.stdout + fine.stderr
    assert "No regression" in fine.stdout
    (tmp_path / "bad.json").write_text('{"runs": []}')
    bad = bench("--compare", "old.json", "bad.json", cwd=tmp_path)
    assert bad.returncode == 1 and "not a corral bench --json file" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_target_that_is_down_or_not_corral_gets_a_clear_error(tmp_path: Path) -> None:
    down = bench(f"http://127.0.0.1:{free_port()}", *SHORT, cwd=tmp_path)
    assert down.returncode == 1 and "Nothing answers at http://127.0.0.1:" in down.stderr
    other = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                              str(port := free_port())], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                requests.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except requests.ConnectionError:
                import time

                time.sleep(0.1)
        not_corral = bench(f"http://127.0.0.1:{port}", *SHORT, cwd=tmp_path)
    finally:
        other.terminate()
        other.wait(10)
    assert not_corral.returncode == 1
    assert "is not a Corral server: GET /v1/models answered 404" in not_corral.stderr
    missing = bench(str(tmp_path / "nope.py"), *SHORT, cwd=tmp_path)
    assert missing.returncode == 1 and "nope.py" in missing.stderr
    for done in (down, not_corral, missing):
        assert "Traceback" not in done.stderr + done.stdout


def test_unknown_model_and_refused_payloads_are_named(tmp_path: Path,
                                                      quickstart: ServerProcess) -> None:
    unknown = bench(quickstart.url, "-m", "nope", *SHORT, cwd=tmp_path)
    assert unknown.returncode == 1
    assert "No model 'nope'; known: iris, text-stats." in unknown.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"sepal_length": -1, "sepal_width": 1, "petal_length": 1, '
                   '"petal_width": 1}\n')
    refused = bench(quickstart.url, "-m", "iris", "--payloads", f"iris={bad}", *SHORT,
                    cwd=tmp_path)
    assert refused.returncode == 1
    assert "Model 'iris' refused a payload with 422" in refused.stderr
    assert "sepal_length" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.skipif(WRK is None, reason="wrk is not installed (the test line installs it)")
def test_wrk_script_runs_under_wrk(tmp_path: Path, quickstart: ServerProcess) -> None:
    script = tmp_path / "iris.lua"
    made = subprocess.run([*CORRAL, "wrk-script", QUICKSTART, "-m", "iris", "-o",
                           str(script)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert made.returncode == 0, made.stderr
    before = sum(server_count(quickstart, "iris").values())
    ran = subprocess.run(["wrk", "-t1", "-c2", "-d2s", "-s", str(script), quickstart.url],
                         capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 0, ran.stderr
    (line,) = [ln for ln in ran.stdout.splitlines() if ln.startswith("{")]
    summary = json.loads(line)
    assert summary["summary"] == "corral-wrk/1"
    assert set(summary["statuses"]) == {"200"} and summary["statuses"]["200"] > 10
    assert summary["errors"]["status"] == 0
    points = dict((p, us) for p, us in summary["latency_us"]["percentiles"])
    assert 0 < points[50] <= points[99] <= summary["latency_us"]["max"]
    served = sum(server_count(quickstart, "iris").values()) - before
    assert 0 <= served - summary["statuses"]["200"] <= 2


def _tree_of(tmp_path: Path) -> list[int]:
    """Corral's processes whose title names a runtime directory under ``tmp_path`` (the
    server a bench started there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if cmd.startswith("corral: ") and str(tmp_path) in cmd:
                found.append(int(entry.name))
    return found


def _wait_for(check: Any, timeout: float, what: str) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGTERM twice", "SIGKILL"])
def test_the_server_bench_started_never_outlives_it(tmp_path: Path, sig: str) -> None:
    """Stopped by SIGTERM (as CI cancellation, timeout or kill do), bench stops the server
    it started, removes its files and keeps the levels it measured, even when the signal
    comes again while it is stopping; killed outright, the server still stops (it gets
    SIGTERM when its parent dies)."""
    import os
    import signal

    out = tmp_path / "partial.json"
    proc = subprocess.Popen(
        [*CORRAL, "bench", QUICKSTART, "-m", "iris", "-c", "1,2,4,8", "-d", "2s",
         "--warmup", "0", "-q", "--json", str(out), "--generator", "builtin"],
        cwd=tmp_path, env={**os.environ, "TMPDIR": str(tmp_path)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout = stderr = ""
    try:
        _wait_for(lambda: list(tmp_path.glob("corral-bench-*/run/ready")), 120,
                  "the server to be ready")
        import time

        time.sleep(6)  # the first level (2 s) is measured
        assert _tree_of(tmp_path), "the server bench started is running"
        proc.send_signal(getattr(signal, sig.split()[0]))
        if sig.endswith("twice"):
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _wait_for(lambda: not _tree_of(tmp_path), 60, "the server to stop")
    if sig.startswith("SIGTERM"):
        assert proc.returncode == 128 + signal.SIGTERM, stderr
        assert "Stopped by SIGTERM." in stderr and "Traceback" not in stderr
        assert not list(tmp_path.glob("corral-bench-*")) and not list(
            tmp_path.glob("corral-wrk-*"))
        doc = json.loads(out.read_text())
        assert doc["interrupted"] == "SIGTERM" and 1 <= len(doc["runs"]) < 4
        assert doc["runs"][0]["server"]["requests"] == doc["runs"][0]["requests"]
        assert "iris" in stdout  # the table of what was measured
    else:
        assert proc.returncode == -signal.SIGKILL


def test_mistakes_in_the_command_are_named(tmp_path: Path) -> None:
    no_scheme = bench("127.0.0.1:8000", cwd=tmp_path)
    assert no_scheme.returncode == 2 and "starts with http:// (http://127.0.0.1:8000)" in \
        no_scheme.stderr
    unitless = bench(QUICKSTART, "--find-max", "--slo-p99", "20", cwd=tmp_path)
    assert unitless.returncode == 2 and "give its unit" in unitless.stderr
    for rate in ("inf", "nan", "0"):
        endless = bench(QUICKSTART, "--rate", rate, cwd=tmp_path)
        assert endless.returncode == 2 and "give positive numbers" in endless.stderr
    both = bench(QUICKSTART, "--rate", "10", "-c", "4", cwd=tmp_path)
    assert both.returncode == 2 and "give one" in both.stderr
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"text": "not a flower"}\n')
    script = subprocess.run([*CORRAL, "wrk-script", QUICKSTART, "-m", "iris", "--payloads",
                             str(wrong)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert script.returncode == 1
    assert "Model 'iris' would refuse a payload (422): sepal_length: Field required" in \
        script.stderr
    unwritable = bench(QUICKSTART, "--json", str(tmp_path / "no" / "such" / "dir.json"),
                       cwd=tmp_path)
    assert unwritable.returncode == 2 and "cannot write" in unwritable.stderr
    assert "Starting corral serve" not in unwritable.stderr  # refused before any work
    for done in (no_scheme, unitless, both, script, unwritable):
        assert "Traceback" not in done.stderr
