"""A whole load test: each model at each level, with a warm-up, the server's own counts
from /metrics around every measured run, a progress bar, and the ``--find-max`` search.
Produces the document described in results.py."""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .generators import Level, Progress, run_level
from .results import FORMAT, error_rate, level_label
from .scrape import read_metrics, requests_by_status, server_side
from .target import LocalServer, ModelTarget, TargetError, fetch

# A level's runs count only once the server has answered everything the generator sent:
# /metrics is read until the model's request count stops moving, for at most this long.
SETTLE_S = 5.0
# --find-max: a rate meets the target when its p99 is within the SLO, at most this share
# of its requests failed, and the generator kept the rate.
MAX_ERROR_SHARE = 0.01
SEARCH_STEPS = 7
SEARCH_PRECISION = 0.05
# Below this many answers, a run's p99 is close to its maximum: the notes say so.
FEW_REQUESTS = 200


@dataclass
class Plan:
    """What to measure (from the command line)."""

    models: list[ModelTarget]
    bodies: dict[str, list[bytes]]
    levels: list[Level]
    duration: float
    warmup: float
    timeout: float
    generator: str  # "wrk" or "builtin"
    generator_version: str
    max_connections: int = 256
    slo_p99_ms: float | None = None  # with find_max
    find_max: bool = False
    command: str = ""
    target: dict[str, Any] = field(default_factory=dict)


class Display:
    """The progress bar (rich) over every run of the plan, or nothing when quiet."""

    def __init__(self, total_s: float, quiet: bool) -> None:
        self.quiet = quiet
        if quiet:
            return
        from rich.console import Console
        from rich.progress import (BarColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        # On standard error: standard output keeps the tables, for a file or a pipe.
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                            TextColumn("{task.fields[live]}"), TimeElapsedColumn(),
                            TimeRemainingColumn(), transient=False,
                            console=Console(stderr=True))
        self.task = self.bar.add_task("starting", total=max(total_s, 1), live="")

    def __enter__(self) -> Display:
        if not self.quiet:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.quiet:
            self.bar.stop()

    def log(self, message: str) -> None:
        if not self.quiet:
            self.bar.console.print(message, markup=False, highlight=False)

    @contextmanager
    def step(self, what: str, seconds: float) -> Iterator[Progress]:
        """A step of ``seconds`` of planned load; yields the generator's progress callback."""
        if self.quiet:
            yield lambda answered, failed: None
            return
        start = time.monotonic()
        done_before = self.bar.tasks[0].completed
        self.bar.update(self.task, description=what, live="")

        def update(answered: int, failed: int) -> None:
            elapsed = time.monotonic() - start
            rate = answered / elapsed if elapsed > 0 else 0.0
            self.bar.update(self.task, completed=done_before + min(elapsed, seconds),
                            live=f"{rate:,.0f} req/s, {failed} failed")

        yield update
        self.bar.update(self.task, completed=done_before + seconds)


def run_plan(plan: Plan, base_url: str, server: LocalServer | None,
             quiet: bool = False) -> dict[str, Any]:
    """Every run of the plan against ``base_url``; the results document."""
    doc: dict[str, Any] = {
        "format": FORMAT,
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": plan.command, "target": dict(plan.target, url=base_url),
        "machine": machine(),
        "generator": {"name": "built-in" if plan.generator == "builtin" else plan.generator,
                      "version": plan.generator_version,
                      "mode": "find-max" if plan.find_max else plan.levels[0].mode},
        "settings": {"duration_s": plan.duration, "warmup_s": plan.warmup,
                     "concurrency": ([probe_concurrency(plan)] if plan.find_max else
                                     [lv.concurrency for lv in plan.levels if lv.concurrency]
                                     or None),
                     "rates": [lv.rate for lv in plan.levels if lv.rate] or None,
                     "slo_p99_ms": plan.slo_p99_ms, "timeout_s": plan.timeout,
                     "max_connections": plan.max_connections},
        "runs": [], "find_max": {} if plan.find_max else None, "notes": [],
    }
    steps = len(plan.levels) if not plan.find_max else 1 + SEARCH_STEPS
    total = len(plan.models) * steps * (plan.duration + plan.warmup)
    with Display(total, quiet) as display:
        try:
            for model in plan.models:
                bodies = plan.bodies[model.name]
                if plan.find_max:
                    doc["find_max"][model.name] = _find_max(plan, base_url, server, model,
                                                            bodies, display, doc)
                    continue
                for level in plan.levels:
                    doc["runs"].append(_measure(plan, base_url, server, model, bodies, level,
                                                display))
        except KeyboardInterrupt as exc:  # keep what was measured; the caller reports it
            doc["interrupted"] = str(exc) or "SIGINT"
            doc["notes"].append("Interrupted: only the levels measured before the "
                                "interruption are shown.")
    doc["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    doc["notes"].extend(notes(doc, plan))
    return doc


def _measure(plan: Plan, base_url: str, server: LocalServer | None, model: ModelTarget,
             bodies: list[bytes], level: Level, display: Display) -> dict[str, Any]:
    """Warm up, then one measured run with the server's counts around it."""
    label = f"{model.name} · {level.label}"
    if plan.warmup > 0:
        with display.step(f"{label} (warm-up)", plan.warmup) as progress:
            run_level(plan.generator, base_url, model, bodies, level, plan.warmup,
                      plan.timeout, plan.max_connections, progress)
    before = _settle(base_url, model.name)  # nothing earlier still in flight counts
    cpu0 = server.cpu_seconds() if server else 0.0
    with display.step(label, plan.duration) as progress:
        run = run_level(plan.generator, base_url, model, bodies, level, plan.duration,
                        plan.timeout, plan.max_connections, progress)
    after = _settle(base_url, model.name)
    side = server_side(before, after, model.name)
    if server is not None:
        cpu = server.cpu_seconds() - cpu0
        side["cpu_ms_per_request"] = cpu * 1000 / side["requests"] if side["requests"] else None
        side["cpu_cores"] = cpu / run["duration_s"] if run["duration_s"] else None
    else:
        side["cpu_ms_per_request"] = side["cpu_cores"] = None
    run["server"] = side if after else None
    lat = run["latency_ms"]
    display.log(f"{label}: {run['rps']:,.1f} req/s, p50 {lat.get('p50', math.nan):.1f} ms, "
                f"p99 {lat.get('p99', math.nan):.1f} ms, {run['errors']} errors")
    return run


def _settle(base_url: str, model: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """/metrics once the model's request count has stopped moving."""
    deadline = time.monotonic() + SETTLE_S
    last = read_metrics(base_url)
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = read_metrics(base_url)
        if requests_by_status(now, model) == requests_by_status(last, model):
            return now
        last = now
    return last


def _find_max(plan: Plan, base_url: str, server: LocalServer | None, model: ModelTarget,
              bodies: list[bytes], display: Display, doc: dict[str, Any]) -> dict[str, Any]:
    """The highest open-loop rate whose p99 meets the target, by bisection between 0 and
    a little above the throughput a closed-loop probe reaches."""
    assert plan.slo_p99_ms is not None
    probe = _measure(plan, base_url, server, model, bodies,
                     Level(concurrency=probe_concurrency(plan)), display)
    doc["runs"].append(probe)
    low, high = 0.0, max(probe["rps"] * 1.1, 1.0)
    steps: list[dict[str, Any]] = []
    best: float | None = None
    failed_above = False  # some rate above the best one missed the target
    rate = high * 0.5
    for _ in range(SEARCH_STEPS):
        run = _measure(plan, base_url, server, model, bodies,
                       Level(rate=max(round(rate, 1), 0.1)), display)
        run["meets_slo"] = meets(run, plan.slo_p99_ms)
        steps.append(run)
        if run["meets_slo"]:
            best = max(best or 0.0, run["rate"])
            low = rate
            if rate >= high * (1 - SEARCH_PRECISION) and not failed_above:
                high = rate * 2  # met at the top of the bracket: search above it
        else:
            high, failed_above = rate, True
        if high - low <= SEARCH_PRECISION * high:
            break
        rate = (low + high) / 2
    return {"slo_p99_ms": plan.slo_p99_ms, "best_rate": best, "probe_rps": probe["rps"],
            "bounded": failed_above, "steps": steps}


def probe_concurrency(plan: Plan) -> int:
    """--find-max's closed-loop probe: the highest --concurrency given."""
    return max(lv.concurrency for lv in plan.levels if lv.concurrency) if any(
        lv.concurrency for lv in plan.levels) else 64


def meets(run: dict[str, Any], slo_p99_ms: float) -> bool:
    # The rate must have been offered (sent in time); how late each send was is already
    # in its latency, which counts from when it was due.
    p99 = run["latency_ms"].get("p99")
    return (p99 is not None and p99 <= slo_p99_ms and run.get("sent_share", 0) >= 0.99
            and run["requests"] > 0 and error_rate(run) <= MAX_ERROR_SHARE)


def notes(doc: dict[str, Any], plan: Plan) -> list[str]:
    """What the reader must know to trust the numbers."""
    out = []
    runs = doc["runs"] + [s for fm in (doc["find_max"] or {}).values() for s in fm["steps"]]
    cpus = os.cpu_count() or 1
    busiest = max((r.get("generator_cores") or 0.0 for r in runs), default=0.0)
    dropped = 0
    where = (", on the same machine as the server" if doc["target"].get("kind") == "app"
             else "")
    out.append(f"Load generator: {doc['generator']['name']} ({plan.generator_version}), "
               f"{_LOOPS[doc['generator']['mode']]}, using up to {busiest:.2f} of this "
               f"machine's {cpus} cores{where}.")
    if plan.generator == "builtin" and busiest > 0.85:
        out.append(f"The built-in generator used {busiest:.0%} of a core: it may have been "
                   "the bottleneck" + (". Install wrk for closed-loop runs (apt-get install "
                                       "wrk)." if plan.levels[0].mode == "closed" and not
                                       plan.find_max else "."))
    few = [r for r in runs if 0 < r["requests"] < FEW_REQUESTS]
    if few:
        out.append(f"{len(few)} run(s) answered fewer than {FEW_REQUESTS} requests: their p99 "
                   "is close to their maximum and varies from run to run. Use a longer "
                   "--duration before comparing them.")
    if doc["target"].get("kind") == "url":
        out.append("Server CPU per request is measured only when corral bench starts the "
                   "server (an app file as TARGET).")
    for model, found in (doc["find_max"] or {}).items():
        if found["best_rate"] and not found["bounded"]:
            out.append(f"{model}: every rate tried met the target; a higher rate than "
                       f"{found['best_rate']:g}/s may meet it too (more steps or a higher "
                       "--concurrency for the probe would tell).")
    for r in runs:
        if r["mode"] == "open" and not r.get("kept_rate"):
            why = ("every one of its connections was busy: the server answered slower than "
                   "the rate needs" if r.get("connections", 0) >= plan.max_connections
                   else "the generator fell behind its schedule")
            out.append(f"{r['model']} at {r['rate']:g}/s: the rate was not kept "
                       f"(sent {r['sent_rate']:.1f}/s, 99% of sends within "
                       f"{r['send_lag_p99_ms']:.1f} ms of their time): {why}. Latencies count "
                       "from when each request was due.")
        if r.get("unanswered"):
            out.append(f"{r['model']} at {level_label(r)}: {r['unanswered']} request(s) got "
                       f"no answer within --timeout ({plan.timeout:g} s, or by then after "
                       "the end) and count as timeouts, with their time since due in the "
                       "percentiles.")
        side = r.get("server")
        if not side:
            continue
        extra = side["requests"] - r["requests"]
        # wrk stops with a request in flight on each connection: the server counted
        # those too; anything else is a difference the reader must see.
        # The same goes for requests the open loop gave up on.
        expected = range(0, (r["concurrency"] or 0) + r.get("unanswered", 0) + 1) \
            if plan.generator == "wrk" else range(0, r.get("unanswered", 0) + 1)
        if extra not in expected:
            out.append(f"{r['model']} at {level_label(r)}: the server counted "
                       f"{side['requests']} requests, the client {r['requests']}.")
        elif extra:
            dropped += 1
    if dropped:
        out.append("wrk drops the requests in flight when it stops (at most one per "
                   "connection); the server counted them, so its count can be higher "
                   "than the client's by that much.")
    return out


_LOOPS = {"closed": "closed loop", "open": "open loop", "find-max": "open loop (--find-max)"}


def machine() -> dict[str, Any]:
    from .. import __version__

    model = platform.processor() or "unknown"
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "corral": __version__, "system": f"{platform.system()} {platform.release()}"}


def preflight(base_url: str, model: ModelTarget, bodies: list[bytes],
              timeout: float) -> None:
    """Each body once: every one must be answered 2xx, else a TargetError quoting the
    answer (a bench of 422s would measure nothing)."""
    for body in bodies:
        status, answer = fetch(base_url.rstrip("/") + model.predict_path, timeout, body)
        if not 200 <= status < 300:
            raise TargetError(
                f"Model {model.name!r} refused a payload with {status}: "
                f"{answer[:400].decode('utf-8', 'replace')}\n"
                f"Payload: {body[:200].decode('utf-8', 'replace')}\nGive real inputs "
                f"with --payloads {model.name}=FILE.jsonl.")

