"""``corral bench``, ``corral locustfile`` and ``corral wrk-script``: load tests built
from the models' own schemas."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import click

from ..errors import StartupError

DEFAULT_LEVELS = "1,4,16,64"
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m)?\s*$")


def parse_duration(raw: str, what: str) -> float:
    """Seconds from ``10``, ``10s``, ``500ms`` or ``2m``."""
    match = _DURATION.match(raw)
    if not match:
        raise click.BadParameter(f"{raw!r} is not a duration (10s, 500ms, 2m).",
                                 param_hint=what)
    value = float(match.group(1))
    return value * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[match.group(2)]


def parse_numbers(raw: str, what: str, kind: type[int] | type[float]) -> list[Any]:
    try:
        values = [kind(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{raw!r} is not a comma-separated list of numbers.",
                                 param_hint=what) from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise click.BadParameter(f"{raw!r}: give positive numbers.", param_hint=what)
    if any(v > LIMITS[kind] for v in values):
        raise click.BadParameter(f"{raw!r}: at most {LIMITS[kind]:,} each.", param_hint=what)
    return values


# The largest level accepted: connections (int) and requests per second (float).
LIMITS: dict[type, int] = {int: 10_000, float: 1_000_000}


def _need_bench_extra() -> None:
    try:
        import matplotlib  # noqa: F401
        import rich  # noqa: F401
    except ImportError:
        raise click.ClickException("corral bench needs the bench extra (rich for progress "
                                   "and tables, matplotlib for the HTML report): pip "
                                   "install 'corral[bench]', or from a checkout pip "
                                   "install -e '.[bench]'.") from None


_MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def read_payloads(options: tuple[str, ...]) -> dict[str | None, list[bytes]]:
    """The files of --payloads [NAME=]FILE.jsonl, read (before any server starts), by
    model name (None: the only model tested). A path may itself hold "=": only a model
    name before the first one names a model."""
    from ..bench.payloads import read_jsonl

    given: dict[str | None, list[bytes]] = {}
    for option in options:
        name, sep, path = option.partition("=")
        if not sep or not _MODEL_NAME.match(name) or Path(option).exists():
            name, path = "", option
        given[name or None] = read_jsonl(path)
    return given


def _payloads(given: dict[str | None, list[bytes]],
              models: list[Any]) -> dict[str, list[bytes]]:
    """Bodies per model: those given (see read_payloads), else built from the schema."""
    from ..bench.payloads import valid_bodies

    if None in given:
        if len(models) != 1:
            raise click.UsageError("--payloads FILE: several models are tested; name one: "
                                   "--payloads NAME=FILE.jsonl.")
        given = {models[0].name: given[None]}
    for name in given:
        if name not in {m.name for m in models}:
            raise click.UsageError(f"--payloads {name}=...: no model {name!r} is tested.")
    return {m.name: given.get(m.name) or valid_bodies(m.input_schema) for m in models}


def _checked(target: str, models: list[Any], bodies: dict[str, list[bytes]]) -> None:
    """Every body is one the model takes: checked with its input class for an app file,
    sent once to a running server."""
    from ..bench.payloads import check_locally
    from ..bench.runner import preflight
    from ..bench.target import is_url

    for model in models:
        if is_url(target):
            preflight(target.rstrip("/"), model, bodies[model.name], 30)
        else:
            check_locally(model, bodies[model.name])


def _describe(target: str) -> list[Any]:
    from ..bench.target import describe_app, describe_url, is_url

    _check_target(target)
    return describe_url(target) if is_url(target) else describe_app(target)


def _check_target(target: str) -> None:
    """A HOST:PORT given without its scheme is not an app file: say so."""
    if re.match(r"^[\w.-]+:\d+(/.*)?$", target) and not Path(target).exists():
        raise click.UsageError(f"{target!r}: a server's URL starts with http:// "
                               f"(http://{target}).")


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP: stop as Ctrl-C does, so the server bench started is stopped."""


def _stop_on_signals() -> None:
    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)


@click.command()
@click.argument("target", required=False)
@click.option("-m", "--model", "models", multiple=True,
              help="A model to test (repeatable; default: every model).")
@click.option("-c", "--concurrency",
              help=f"Closed loop: connections at each level, comma-separated  [default: "
                   f"{DEFAULT_LEVELS}; with --find-max, the probe's: 64].")
@click.option("--rate", help="Open loop instead: requests per second at each level, "
              "comma-separated (latency counted from each request's scheduled time).")
@click.option("--find-max", is_flag=True,
              help="Search for the highest rate whose p99 meets --slo-p99.")
@click.option("--slo-p99", help="The p99 target of --find-max, with its unit: 200ms, 1.5s.")
@click.option("-d", "--duration", default="10s", show_default=True,
              help="Measured time per level.")
@click.option("--warmup", default="2s", show_default=True,
              help="Unmeasured load before each level.")
@click.option("--payloads", multiple=True, metavar="[NAME=]FILE.jsonl",
              help="Real inputs, one JSON input (or array of inputs) per line "
                   "(default: built from the model's schema examples).")
@click.option("--generator", type=click.Choice(["auto", "wrk", "builtin"]), default="auto",
              show_default=True, help="auto: wrk when installed for closed loop, the "
              "built-in generator otherwise and for open loop.")
@click.option("--timeout", "request_timeout", default="30s", show_default=True,
              help="Per request.")
@click.option("--max-connections", type=click.IntRange(1, 10_000), default=256,
              show_default=True, help="Open loop: connections the generator may open.")
@click.option("--report", type=click.Path(dir_okay=False), help="Write an HTML report.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False),
              help="Write the results as JSON (for --compare).")
@click.option("--compare", nargs=2, type=click.Path(exists=True, dir_okay=False),
              metavar="OLD.json NEW.json",
              help="Compare two --json results instead of running; exit 1 past --threshold.")
@click.option("--threshold", default="10%", show_default=True,
              help="--compare: the change that counts as a regression.")
@click.option("--workers", type=int, help="App targets: corral serve --workers.")
@click.option("--threads", type=int, help="App targets: corral serve --threads.")
@click.option("--worker-class", type=click.Choice(["gthread", "gevent"]),
              help="App targets: corral serve --worker-class.")
@click.option("--start-timeout", default="300s", show_default=True,
              help="App targets: how long the server may take to get ready.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def bench(target: str | None, **opts: Any) -> None:
    """Load-test the models of TARGET and report.

    TARGET is an app file (started with corral serve on a free port for the test and
    stopped after) or the URL of a running Corral server. Each model is measured at
    each level, after a warm-up; the table shows requests/s, latency percentiles,
    errors by status and, from the server's /metrics, realised batch sizes and queue
    time against compute time.

    \b
      corral bench app.py
      corral bench http://127.0.0.1:8000 -m iris -c 1,16,64 -d 20s --report out.html
      corral bench app.py --rate 100,200,400 --json new.json
      corral bench app.py --find-max --slo-p99 200ms
      corral bench --compare old.json new.json --threshold 5%
    """
    _need_bench_extra()
    if opts["compare"]:
        if target:
            raise click.UsageError("--compare reads two result files; give no TARGET.")
        old, new = opts["compare"]
        sys.exit(_compare(old, new, opts["threshold"]))
    if not target:
        raise click.UsageError("Give a TARGET: an app file or the URL of a Corral server.")
    _check_target(target)
    _stop_on_signals()
    try:
        _bench(target, opts)
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None
    except Interrupted as exc:
        click.echo(f"Stopped by {exc}.", err=True)
        sys.exit(128 + getattr(signal, str(exc)).value)


def _bench(target: str, opts: dict[str, Any]) -> None:
    from rich.console import Console

    from ..bench.generators import Level
    from ..bench.runner import Plan, preflight, run_plan
    from ..bench.target import (LocalServer, TargetError, describe_url, is_url, pick,
                                signals_held)
    from ..bench.wrk import wrk_version

    duration = parse_duration(opts["duration"], "--duration")
    warmup = parse_duration(opts["warmup"], "--warmup")
    timeout = parse_duration(opts["request_timeout"], "--timeout")
    if duration < 1:
        raise click.BadParameter("at least 1s.", param_hint="--duration")
    if timeout <= 0:
        raise click.BadParameter("more than 0s.", param_hint="--timeout")
    for option in ("json_out", "report"):
        _check_writable(opts[option], "--" + option.removesuffix("_out"))
    if opts["json_out"] and opts["report"] and \
            Path(opts["json_out"]).resolve() == Path(opts["report"]).resolve():
        raise click.UsageError("--json and --report name the same file; give two.")
    slo = None
    if opts["slo_p99"]:
        if not re.search(r"(ms|s|m)\s*$", opts["slo_p99"]):
            raise click.BadParameter(f"{opts['slo_p99']!r}: give its unit (200ms, 1.5s).",
                                     param_hint="--slo-p99")
        slo = parse_duration(opts["slo_p99"], "--slo-p99") * 1000
    if opts["find_max"] and slo is None:
        raise click.UsageError("--find-max needs a target: --slo-p99 200ms.")
    if slo is not None and not opts["find_max"]:
        raise click.UsageError("--slo-p99 is the target of --find-max; add --find-max.")
    if opts["rate"] and opts["find_max"]:
        raise click.UsageError("--find-max chooses the rates itself; drop --rate.")
    if opts["rate"] and opts["concurrency"]:
        raise click.UsageError("--rate (open loop) and --concurrency (closed loop) are two "
                               "ways to load the server; give one.")
    open_loop = bool(opts["rate"]) or opts["find_max"]
    concurrency = opts["concurrency"] or ("64" if opts["find_max"] else DEFAULT_LEVELS)
    levels = ([Level(rate=r) for r in parse_numbers(opts["rate"], "--rate", float)]
              if opts["rate"] else
              [Level(concurrency=c) for c in parse_numbers(concurrency, "--concurrency", int)])
    if any(0 < lv.rate * duration < 10 for lv in levels):
        raise click.BadParameter("each rate must send at least 10 requests in --duration.",
                                 param_hint="--rate")
    version = wrk_version()
    generator = opts["generator"]
    if generator == "wrk" and version is None:
        raise click.UsageError("--generator wrk: wrk is not installed (apt-get install wrk).")
    if generator == "wrk" and open_loop:
        raise click.UsageError("wrk has no rate control: open-loop runs (--rate, "
                               "--find-max) use the built-in generator.")
    if generator == "auto":
        generator = "wrk" if version and not open_loop else "builtin"
    if generator == "builtin":
        version = _builtin_version()
        if is_url(target) and not target.startswith("http://"):
            raise click.UsageError("The built-in generator speaks plain HTTP: give an "
                                   "http:// URL, or wrk (closed loop) for https.")
    serve_args = [f"--{k.replace('_', '-')}={opts[k]}"
                  for k in ("workers", "threads", "worker_class") if opts[k] is not None]
    if is_url(target) and serve_args:
        raise click.UsageError("--workers, --threads and --worker-class start an app; "
                               "a URL target is already running.")
    given = read_payloads(opts["payloads"])
    server = None
    console = Console(stderr=True)
    doc: dict[str, Any] | None = None
    try:
        if is_url(target):
            base_url = target.rstrip("/")
        else:
            console.print(f"Starting corral serve {target} ...", markup=False,
                          highlight=False)
            server = LocalServer(target, serve_args,
                                 parse_duration(opts["start_timeout"], "--start-timeout"))
            base_url = server.url
        models = pick(describe_url(base_url), list(opts["models"]))
        bodies = _payloads(given, models)
        for model in models:
            preflight(base_url, model, bodies[model.name], timeout)
        command = "corral bench " + " ".join(shlex.quote(a) for a in sys.argv[2:])
        plan = Plan(models=models, bodies=bodies, levels=levels, duration=duration,
                    warmup=warmup, timeout=timeout, generator=generator,
                    generator_version=version or "", max_connections=opts["max_connections"],
                    slo_p99_ms=slo, find_max=opts["find_max"], command=command,
                    target={"kind": "url" if server is None else "app", "value": target})
        try:
            doc = run_plan(plan, base_url, server, quiet=opts["quiet"])
        except TargetError as exc:
            if server is not None and server.proc.poll() is not None:
                raise TargetError(f"corral serve {target} exited with {server.proc.returncode} "
                                  f"during the load test:\n{server.log_tail()}") from None
            raise
        # From here on, signals wait: what was measured is shown and written before the
        # server stops (its stop takes a while; if bench dies, the server stops anyway).
        with signals_held():
            _show(doc, opts)
    finally:
        if server is not None:
            server.stop()
    if doc.get("interrupted"):
        raise Interrupted(doc["interrupted"])





def _show(doc: dict[str, Any], opts: dict[str, Any]) -> None:
    """The tables, the --find-max answers and the notes; the --json and --report files."""
    from rich.console import Console
    from rich.markup import escape

    from ..bench.tables import summary_tables

    out = Console(width=None if sys.stdout.isatty() else 160)
    for table in summary_tables(doc):
        out.print(table)
    for model, found in (doc["find_max"] or {}).items():
        best = found["best_rate"]
        out.print(f"{model}: highest rate with p99 <= {found['slo_p99_ms']:g} ms: "
                  + (f"{best:g} req/s" if best else "none of the rates tried"),
                  highlight=False)
    for note in doc["notes"]:
        out.print(f"[yellow]note:[/yellow] {escape(note)}", highlight=False)
    if opts["json_out"]:
        Path(opts["json_out"]).write_text(json.dumps(doc, indent=1))
        out.print(f"Results: {opts['json_out']}")
    if opts["report"]:
        from ..bench.report import render_html

        Path(opts["report"]).write_text(render_html(doc), encoding="utf-8")
        out.print(f"Report: {opts['report']}")


def _check_writable(path: str | None, option: str) -> None:
    """Fail now, not after the whole run, when a result file cannot be written."""
    if path is None:
        return
    folder = Path(path).resolve().parent
    if not folder.is_dir() or not os.access(folder, os.W_OK) or Path(path).is_dir():
        raise click.BadParameter(f"cannot write {path} (is {folder} a writable directory?).",
                                 param_hint=option)


def _builtin_version() -> str:
    from .. import __version__

    return f"corral {__version__}"


def _compare(old_path: str, new_path: str, threshold_raw: str) -> int:
    from rich.console import Console

    from ..bench.results import check_format, compare, differences, level_label, unmatched
    from ..bench.runner import FEW_REQUESTS
    from ..bench.tables import compare_table

    match = re.match(r"^\s*([0-9]*\.?[0-9]+)\s*%?\s*$", threshold_raw)
    if not match:
        raise click.BadParameter(f"{threshold_raw!r} is not a percentage (10%).",
                                 param_hint="--threshold")
    threshold = float(match.group(1)) / 100
    docs = []
    for path in (old_path, new_path):
        try:
            docs.append(check_format(json.loads(Path(path).read_text(encoding="utf-8")), path))
        except (ValueError, OSError) as exc:
            raise click.ClickException(str(exc) if isinstance(exc, ValueError) and
                                       "corral bench" in str(exc)
                                       else f"Cannot read {path}: {exc}") from None
    try:
        changes = compare(docs[0], docs[1], threshold)
        remarks = [*differences(*docs), *(f"not compared: {c}" for c in unmatched(*docs))]
    except (TypeError, AttributeError, KeyError, ValueError) as exc:
        raise click.ClickException(f"{old_path} or {new_path} is not a valid corral bench "
                                   f"--json file ({type(exc).__name__}: {exc}).") from None
    if not changes:
        raise click.ClickException(f"{old_path} and {new_path} share no (model, level) cell.")
    out = Console(width=None if sys.stdout.isatty() else 120)
    out.print(compare_table(changes, threshold))
    few = sorted({r["model"] + " at " + level_label(r) for doc in docs for r in doc["runs"]
                  if 0 < r["requests"] < FEW_REQUESTS})
    if few:
        out.print(f"note: fewer than {FEW_REQUESTS} requests in {', '.join(few)}: their "
                  "percentiles vary from run to run; compare longer runs.", highlight=False)
    for line in remarks:
        out.print(f"note: {line}", highlight=False, markup=False)
    regressed = [c for c in changes if c.regressed]
    if regressed:
        out.print(f"{len(regressed)} regression(s) past {threshold:.0%}.")
        return 1
    out.print("No regression.")
    return 0


@click.command()
@click.argument("target")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write to this file (default: standard output).")
@click.option("-m", "--model", "models", multiple=True,
              help="A model to include (repeatable; default: every model).")
@click.option("--host", help="The server locust targets (default: TARGET when it is a "
              "URL, else http://127.0.0.1:8000).")
@click.option("--invalid-share", type=click.FloatRange(0, 1), default=0.05,
              show_default=True, help="Share of requests sent invalid (they must get a 4xx).")
@click.option("--no-jobs", is_flag=True, help="No job submissions.")
@click.option("--payloads", multiple=True, metavar="[NAME=]FILE.jsonl",
              help="Real inputs, one JSON input per line.")
def locustfile(target: str, output: str | None, models: tuple[str, ...], host: str | None,
               invalid_share: float, no_jobs: bool, payloads: tuple[str, ...]) -> None:
    """Write a Locust locustfile for the models of TARGET (app file or URL).

    \b
      corral locustfile app.py -o locustfile.py
      locust -f locustfile.py --headless -u 16 -r 16 -t 60s
    """
    from ..bench.locustfile import locustfile_text
    from ..bench.target import is_url, pick

    try:
        chosen = pick(_describe(target), list(models))
        bodies = _payloads(read_payloads(payloads), chosen)
        _checked(target, chosen, bodies)
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None
    host = host or (target.rstrip("/") if is_url(target) else "http://127.0.0.1:8000")
    text = locustfile_text(chosen, host, invalid_share=invalid_share, jobs=not no_jobs,
                           bodies=bodies, filename=output or "locustfile.py")
    _write(text, output)


@click.command("wrk-script")
@click.argument("target")
@click.option("-m", "--model", required=True, help="The model to post to.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write to this file (default: standard output).")
@click.option("--payloads", metavar="FILE.jsonl", help="Real inputs, one JSON input per line.")
def wrk_script_command(target: str, model: str, output: str | None,
                       payloads: str | None) -> None:
    """Write a wrk Lua script that posts valid inputs to MODEL of TARGET (app or URL)
    and prints a JSON summary.

    \b
      corral wrk-script app.py -m iris -o iris.lua
      wrk -t2 -c16 -d30s -s iris.lua http://127.0.0.1:8000
    """
    from ..bench.target import pick
    from ..bench.wrk import wrk_script

    try:
        chosen = pick(_describe(target), [model])
        bodies = _payloads(read_payloads((payloads,) if payloads else ()), chosen)
        _checked(target, chosen, bodies)
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None
    _write(wrk_script(chosen[0].name, chosen[0].predict_path, bodies[chosen[0].name]), output)


def _write(text: str, output: str | None) -> None:
    if output:
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"Wrote {output}", err=True)
    else:
        click.echo(text, nl=False)
