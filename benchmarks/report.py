"""docs/benchmarks.md from run.py's JSON: ``python benchmarks/report.py results.json``."""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any


def _num(x: float | None, digits: int) -> str:
    if x is None:
        return "–"
    return f"{x:,.{digits}f}"


def spread(values: Iterable[float | None], digits: int = 1) -> str:
    """'median (min–max)' over rounds; just the value for one round."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "–"
    med = statistics.median(vals)
    if len(vals) == 1:
        return _num(med, digits)
    return f"{_num(med, digits)} ({_num(min(vals), digits)}–{_num(max(vals), digits)})"


def median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _group(runs: list[dict[str, Any]]) -> dict[tuple[str, str, int], list[dict[str, Any]]]:
    out: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        out[(r["workload"], r["config"], r["connections"])].append(r)
    return out


def _per_round(runs: list[dict[str, Any]], key: Callable[[dict[str, Any]], float | None]
               ) -> dict[int, float | None]:
    return {r["round"]: key(r) for r in runs}


def _ratio_text(num: dict[int, float | None], den: dict[int, float | None],
                digits: int = 2) -> tuple[float | None, str]:
    """Ratio of the medians, and the per-round ratios' range (paired within a round)."""
    mn, md = median(num.values()), median(den.values())
    ratio = mn / md if mn is not None and md else None
    paired = [num[k] / den[k] for k in num if k in den and num[k] is not None and den[k]]
    text = _num(ratio, digits)
    if len(paired) > 1:
        text += f" (rounds {min(paired):.{digits}f}–{max(paired):.{digits}f})"
    return ratio, text


def _verdict(ok: bool | None) -> str:
    return "–" if ok is None else ("**met**" if ok else "**not met**")


def write_report(res: dict[str, Any]) -> str:
    s = res["settings"]
    m = res["machine"]
    quick = res.get("quick")
    groups = _group(res["runs"])
    workloads = s["workloads"]
    layouts = [f"corral {r}x{t}" for r, t in s["layouts"]]
    headline = layouts[0] if layouts else "corral 1x2"
    L: list[str] = []
    add = L.append

    add("# Benchmarks: Corral against Flask + Gunicorn")
    add("")
    if quick:
        add("> **This is a quick smoke run** (`--quick`: one round of 3-second wrk runs, "
            "so no spread), on a 2-core machine shared with other jobs (CI test suites); "
            "the *other load* columns show how much CPU they took during each measurement. "
            "Its numbers show that the benchmark works end to end and roughly where things "
            "stand; they are not the full measurement. Run `python benchmarks/run.py` "
            "(3 rounds of 10 s) on a quiet machine for that.")
        add("")
    add(f"Taken {res['started']} in {res['elapsed_s']:.0f} s, at commit `{res['git']['commit']}`"
        + (f" with {res['git']['src_uncommitted_files']} uncommitted file(s) under src/"
           if res["git"].get("src_uncommitted_files") else "") + ". Command, from the "
        "repository root with the virtualenv that has Corral and the `embeddings` extra:")
    add("")
    add("```sh")
    add(res["command"])
    add("```")
    add("")
    add("## Machine")
    add("")
    add(f"- {m['nproc']} CPUs (`nproc`; {m['usable_cpus']} usable by this process), "
        f"{m['cpu_model']}{' with AVX-512' if m.get('avx512') else ''}; memory {m['memory']}; "
        f"Linux {m['kernel']}.")
    add(f"- Python {m['python']}; {m['packages']}; {m['wrk']}.")
    add(f"- Load average {' '.join(res['loadavg_start'])} at the start, "
        f"{' '.join(res['loadavg_end'])} at the end. Client (wrk) and servers share the "
        "same cores.")
    if res.get("openblas_unset"):
        add(f"- {' and '.join(res['openblas_unset'])} were set in the environment; the "
            "benchmark unsets them in its child processes only (they select an old, slower "
            "OpenBLAS kernel for current numpy).")
    else:
        add("- OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE were not set (the benchmark unsets "
            "them in its child processes when they are, since they slow current numpy).")
    add("")

    add("## What runs")
    add("")
    nt = res["naive_torch_threads"]
    add(f"- **naive**: `benchmarks/naive_app.py`, Flask under `gunicorn --worker-class gthread "
        f"--workers {s['naive_workers']} --threads {s['naive_threads']} --timeout 120`. "
        "Each worker loads the model at import (no `--preload`) and runs one forward pass "
        f"per request in the request's thread. Torch threads per worker: {nt} "
        "(cores ÷ workers, so the workers together use each core once; concurrent requests "
        "in one worker still compute concurrently).")
    add(f"- **corral**: `corral serve benchmarks/corral_app.py --workers {s['corral_workers']}` "
        "(gthread workers of 64 threads, the default), one dispatcher and the replicas of "
        "the one model served. `corral RxT` is R replicas of T torch threads each "
        f"(`EMBEDDINGS_THREADS`, `OMP_NUM_THREADS`); the headline is **{headline}**. "
        "The no-op model has one replica (**corral gevent**: the same under `--worker-class gevent`); **corral inline** serves it with `placement = \"inline\"` instead (one copy in each HTTP worker, no replica process), and **corral inline gevent** the same with `--worker-class gevent`. Both models batch with max_size 32, max_wait_ms 5."
        + (" Extra environment for corral and the ceiling: "
           + ", ".join(f"`{k}={v}`" for k, v in s["corral_env"].items()) + "."
           if s.get("corral_env") else ""))
    add(f"- **ceiling** (MiniLM): `benchmarks/ceiling.py`, the model's own `predict()` on "
        f"full batches of 32 in one process with {s['ceiling_threads']} torch threads, no "
        "HTTP.")
    add("- Workloads: **noop** (a pydantic `{text}` in, `{length}` out: the serving stack "
        "alone) and **minilm** (`examples/embeddings.py`'s all-MiniLM-L6-v2, 384 floats "
        "out). Every request is the same one-sentence JSON body (`benchmarks/body.json`, "
        "19 tokens with [CLS] and [SEP]).")
    add(f"- Each server is started on a free port, checked with one request by hand, warmed "
        f"with {s['warmup']:g} s of wrk, then driven by `wrk -t{s['wrk_threads']} -cN "
        f"-d{s['duration']:g}s --timeout 30s --latency -s benchmarks/post.lua` at N = "
        f"{', '.join(map(str, s['connections']))}, then stopped with SIGTERM. "
        f"{s['rounds']} round(s); the order of the configurations rotates each round.")
    add("")
    add("Columns: req/s and latency from wrk; *errors* are non-2xx responses / socket errors "
        "(connect, read, write, timeout) summed over rounds; *CPU/req* is the utime+stime of "
        "every server process (from `/proc/PID/stat`, before and after the wrk run) divided by "
        "the requests; *batch* is the mean (max) number of inputs per `predict()` call, from "
        "the replica (naive: 1 by construction); *other load* is the CPU the rest of the "
        "machine used meanwhile (all busy time in `/proc/stat` less server and wrk), in cores: "
        "anything above ~0.1 means the numbers are disturbed. Cells are the median over rounds "
        "with (min–max) when there are several.")
    add("")

    for workload in workloads:
        add(f"## {workload}")
        add("")
        configs = ["naive", *(layouts if workload == "minilm" else ["corral", "corral gevent", "corral inline", "corral inline gevent"])]
        add("| stack | conns | req/s | p50 ms | p99 ms | errors | CPU/req ms | batch | "
            "other load |")
        add("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for cfg in configs:
            for conns in s["connections"]:
                runs = groups.get((workload, cfg, conns), [])
                if not runs:
                    continue
                errs = (f"{sum(r['errors_non2xx'] for r in runs)} / "
                        f"{sum(r['errors_socket'] for r in runs)}")
                bmax = max((r.get("batch_max") or 0) for r in runs)
                add(f"| {cfg} | {conns} | {spread((r['rps'] for r in runs), 1)} | "
                    f"{spread((r['p50_ms'] for r in runs), 1)} | "
                    f"{spread((r['p99_ms'] for r in runs), 1)} | {errs} | "
                    f"{spread((r['cpu_ms_per_req'] for r in runs), 3)} | "
                    f"{_num(median(r['batch_mean'] for r in runs), 1)} ({bmax}) | "
                    f"{spread((r['other_cores'] for r in runs), 2)} |")
        add("")
        if workload == "minilm" and res["ceiling"]:
            c = res["ceiling"]
            add(f"Ceiling (no HTTP, batches of {c[0]['batch']}, {c[0]['threads']} torch "
                f"threads): **{spread((x['inputs_per_s'] for x in c), 1)} inputs/s** "
                f"over the whole window ({spread((x['inputs_per_s_from_median'] for x in c), 1)}"
                f" from the median batch time, {spread((x['batch_ms_p50'] for x in c), 0)} ms; "
                f"slowest batch {spread((x['batch_ms_max'] for x in c), 0)} ms); other load "
                f"{spread((x['other_cores'] for x in c), 2)} cores. The targets use the first "
                "figure.")
            add("")
        mems = [x for x in res["memory_runs"] if x["workload"] == workload]
        if mems:
            add("Memory while serving (PSS summed over every server process, MiB), and "
                "start-up time (s, to ready):")
            add("")
            add("| stack | PSS MiB | by process (first round) | start s |")
            add("|---|---:|---|---:|")
            for cfg in configs:
                rows = [x for x in mems if x["config"] == cfg]
                if not rows:
                    continue
                parts = ", ".join(f"{role} {v['pss_mib']:.0f}" + (f" ({v['count']}×)"
                                                                   if v["count"] > 1 else "")
                                  for role, v in rows[0]["by_role"].items())
                add(f"| {cfg} | {spread((x['pss_mib'] for x in rows), 0)} | {parts} | "
                    f"{spread((x['start_s'] for x in rows), 1)} |")
            add("")
        hist = [r for r in res["runs"] if r["workload"] == workload and r.get("batch_hist")]
        if hist:
            add("Realised batch sizes (size: number of `predict()` calls), first round:")
            add("")
            seen = set()
            for r in hist:
                key = (r["config"], r["connections"])
                if key in seen:
                    continue
                seen.add(key)
                h = ", ".join(f"{k}: {v}" for k, v in r["batch_hist"].items())
                add(f"- {r['config']}, {r['connections']} conns: {h}")
            add("")

    mem = res.get("memory") or {}
    if mem:
        add(f"## Memory and idle CPU with {s['memory_workers']} HTTP workers (MiniLM)")
        add("")
        add(f"Both stacks with {s['memory_workers']} HTTP workers (naive: {s['memory_workers']} "
            f"Gunicorn workers, each with the model, {res.get('memory_torch_threads', 1)} torch "
            f"thread(s); corral: `--workers {s['memory_workers']}` and the headline "
            "layout), after "
            f"{s['memory_warmup']:g} s of wrk at 16 connections and 3 s of rest. PSS is summed "
            "over every process of the server; idle CPU is utime+stime of all of them over "
            f"{s['idle_seconds']:g} s with no traffic.")
        add("")
        add("| stack | PSS MiB | PSS by process (USS of each) | idle CPU (% of one core) |")
        add("|---|---:|---|---:|")
        for kind in ("naive", "corral"):
            if kind not in mem:
                continue
            x = mem[kind]
            parts = ", ".join(
                f"{role} {v['pss_mib']:.0f}" + (f" ({v['count']}×)" if v["count"] > 1 else "")
                + " (USS " + "/".join(f"{u:.0f}" for u in v.get("each_uss_mib", [])) + ")"
                for role, v in x["by_role"].items())
            add(f"| {kind} | {x['pss_mib']:.0f} | {parts} | "
                f"{x['idle']['cpu_percent_of_one_core']:.2f} |")
        add("")

    # -- targets ---------------------------------------------------------------------------
    add("## Targets (ratios within this run)")
    add("")
    add("| target | measured | verdict |")
    add("|---|---|---|")

    def pr(workload: str, cfg: str, conns: int, key: str) -> dict[int, float | None]:
        return _per_round(groups.get((workload, cfg, conns), []), lambda r: r[key])

    if "minilm" in workloads and 64 in s["connections"] and res["ceiling"]:
        ceil = {c["round"]: c["inputs_per_s"] for c in res["ceiling"]}
        ratio, text = _ratio_text(pr("minilm", headline, 64, "rps"), ceil)
        add(f"| MiniLM, 64 conns: {headline} ≥ 90% of the ceiling's throughput | {text} | "
            f"{_verdict(None if ratio is None else ratio >= 0.9)} |")
        p99 = median(pr("minilm", headline, 64, "p99_ms").values())
        add(f"| MiniLM, 64 conns: {headline} p99 < 400 ms | {_num(p99, 1)} ms | "
            f"{_verdict(None if p99 is None else p99 < 400)} |")
    if "minilm" in workloads and 1 in s["connections"]:
        ratio, text = _ratio_text(pr("minilm", headline, 1, "p50_ms"),
                                  pr("minilm", "naive", 1, "p50_ms"))
        add(f"| MiniLM, 1 conn: {headline} p50 within 10% of naive (ratio ≤ 1.10) | {text} | "
            f"{_verdict(None if ratio is None else ratio <= 1.10)} |")
    if "noop" in workloads and 64 in s["connections"]:
        ratio, text = _ratio_text(pr("noop", "corral", 64, "rps"), pr("noop", "naive", 64, "rps"))
        add(f"| no-op, 64 conns: corral ≥ 0.6× naive throughput | {text} | "
            f"{_verdict(None if ratio is None else ratio >= 0.6)} |")
        cpu = median(pr("noop", "corral", 64, "cpu_ms_per_req").values())
        add(f"| no-op, 64 conns: corral ≤ 0.5 ms server CPU per request | {_num(cpu, 3)} ms | "
            f"{_verdict(None if cpu is None else cpu <= 0.5)} |")
        if ("noop", "corral gevent", 64) in groups:
            ratio, text = _ratio_text(pr("noop", "corral gevent", 64, "rps"),
                                      pr("noop", "naive", 64, "rps"))
            add(f"| no-op, 64 conns: corral, gevent workers ≥ 0.6× naive throughput | {text} | "
                f"{_verdict(None if ratio is None else ratio >= 0.6)} |")
            cpu = median(pr("noop", "corral gevent", 64, "cpu_ms_per_req").values())
            add(f"| no-op, 64 conns: corral, gevent workers ≤ 0.5 ms server CPU per request | "
                f"{_num(cpu, 3)} ms | {_verdict(None if cpu is None else cpu <= 0.5)} |")
        if ("noop", "corral inline", 64) in groups:
            ratio, text = _ratio_text(pr("noop", "corral inline", 64, "rps"),
                                      pr("noop", "naive", 64, "rps"))
            add(f"| no-op, 64 conns: corral inline ≥ 0.9× naive throughput | {text} | "
                f"{_verdict(None if ratio is None else ratio >= 0.9)} |")
        if ("noop", "corral inline gevent", 64) in groups:
            ratio, text = _ratio_text(pr("noop", "corral inline gevent", 64, "rps"),
                                      pr("noop", "naive", 64, "rps"))
            add(f"| no-op, 64 conns: corral inline, gevent workers ≥ 0.9× naive throughput | "
                f"{text} | {_verdict(None if ratio is None else ratio >= 0.9)} |")
    if "naive" in mem and "corral" in mem:
        saved = mem["naive"]["pss_mib"] - mem["corral"]["pss_mib"]
        worker = mem["naive"]["by_role"].get("worker")
        replica = mem["corral"]["by_role"].get("replica")
        units = []
        if worker:
            units.append(("naive-worker unit", worker["pss_mib"] / worker["count"]))
        if replica:
            units.append(("replica unit", replica["pss_mib"] / replica["count"]))
        text = f"{saved:.0f} MiB less = " + "; ".join(
            f"{saved / size:.2f} copies by the {name} ({size:.0f} MiB)" for name, size in units)
        verdicts = [f"{name}: {'met' if saved / size >= 2 else 'not met'}"
                    for name, size in units]
        add(f"| {s['memory_workers']} HTTP workers: corral PSS below naive's by ≥ 2 model "
            f"copies | {text} | **{'; '.join(verdicts)}** |")
    if "corral" in mem:
        idle = mem["corral"]["idle"]["cpu_percent_of_one_core"]
        add(f"| idle corral server < 1% CPU | {idle:.2f}% of one core over "
            f"{mem['corral']['idle']['seconds']:g} s | {_verdict(idle < 1)} |")
    add("")
    add("A *model copy* is measured two ways: the PSS of one naive worker in the 4-worker "
        "stack (what each further copy costs that stack, shared libraries split four ways), "
        "and the PSS of Corral's one MiniLM replica (interpreter, torch and weights in a "
        "process that shares them with nobody: the stricter unit). Throughput ratios are "
        "ratios of medians; *rounds* gives the range of the same ratio taken within each "
        "round.")
    add("")
    add("## Notes")
    add("")
    add("- Client and servers share the machine's cores: wrk's own CPU comes out of what the "
        "servers could use, equally for both stacks.")
    add("- Batch sizes come from the benchmark's app file, which wraps the example model and "
        "appends each `predict()` call's size to a file (one small write per batch).")
    add("- Every measurement, per round, with wrk's error breakdown, client CPU and the "
        f"servers' exit codes, is in the JSON file (`--json`); server logs were in "
        f"`{res['logs']}`.")
    stops = res.get("stops", [])
    bad = [x for x in stops if x.get("needed_sigkill") or x.get("left_behind")
           or x.get("exit_code") not in (0, None)]
    add(f"- Shutdown: {len(stops)} servers stopped with SIGTERM; "
        + ("all exited 0 within "
           f"{max((x['stop_s'] for x in stops), default=0):.1f} s and left no process."
           if not bad else f"{len(bad)} did not stop cleanly: {bad}."))
    add("")
    return "\n".join(L)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(write_report(json.load(f)))
