"""The HTML report that ``corral bench --report FILE`` writes: one self-contained page.

The page is built from the ``corral bench --json`` document (see
:mod:`corral.bench.results`): a header saying what was measured on what, the notes the
reader must know, then one section per model with a table per level and the plots of
:mod:`corral.bench.plots` inlined as SVG. Nothing is linked: no script, no stylesheet,
font or image is fetched, so the file reads the same offline, attached to a ticket or
years later. Every string taken from the document is HTML-escaped.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

from . import plots
from .plots import num
from .results import error_rate, level_label

DASH = "\N{EN DASH}"

STYLE = """
:root { color-scheme: light; --muted: #5f6b7a; --line: #d8dee6; --warn: #fff4d6; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
       sans-serif; margin: 0 auto; max-width: 1100px; padding: 1.5rem 2rem 4rem;
       color: #1d2430; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .25rem; }
h2 { font-size: 1.3rem; border-bottom: 2px solid var(--line); padding-bottom: .2rem;
     margin-top: 2.5rem; }
h3 { font-size: 1.05rem; margin-top: 1.6rem; }
code { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
       font-size: .9em; background: #f3f5f8; padding: .05em .3em; border-radius: 3px;
       overflow-wrap: anywhere; }
dl.header { display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1.2rem; }
dl.header dt { color: var(--muted); }
dl.header dd { margin: 0; }
.notes { background: var(--warn); border-left: 4px solid #e0a800; padding: .6rem 1rem;
         margin: 1.2rem 0; }
.notes ul { margin: .3rem 0 0; padding-left: 1.2rem; }
nav ul { padding-left: 1.2rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .9rem; }
th, td { padding: .3rem .6rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { text-align: left; background: #f3f5f8; font-weight: 600; }
td.num, th.num { text-align: right; }
td { font-variant-numeric: tabular-nums; white-space: nowrap; }
td small { color: var(--muted); }
.table-wrap { overflow-x: auto; }
figure { margin: 1rem 0 1.6rem; }
figure svg { display: block; max-width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: .9rem; margin-top: .3rem; }
p.none { color: var(--muted); font-style: italic; }
.answer { font-weight: 600; }
"""


def fmt(value: Any, digits: int = 1) -> str:
    """A number for a table cell, with thousands separators; a dash when missing or NaN."""
    x = num(value)
    if not math.isfinite(x):
        return DASH
    return f"{x:,.{digits}f}"


def fmt_ms(value: Any) -> str:
    """A latency in ms with about three significant digits."""
    x = num(value)
    if not math.isfinite(x):
        return DASH
    return fmt(x, 2 if abs(x) < 10 else 1 if abs(x) < 100 else 0)


def models_of(doc: dict[str, Any]) -> list[str]:
    """The models in the document, in the order they were measured."""
    names = [str(r.get("model")) for r in doc.get("runs") or []]
    names += list((doc.get("find_max") or {}).keys())
    return list(dict.fromkeys(names))


def error_cell(run: dict[str, Any]) -> str:
    """How many requests failed, their share, and the breakdown: ``45 (0.4%)  503×45``."""
    total = int(num(run.get("errors"))) if math.isfinite(num(run.get("errors"))) else 0
    if total == 0:
        return "0"
    try:
        rate = error_rate(run)
    except (KeyError, TypeError):
        rate = math.nan
    share = f" ({rate:.1%})" if math.isfinite(rate) else ""
    kinds = ", ".join(f"{k}\N{MULTIPLICATION SIGN}{n:,}" for k, n in
                      sorted(plots.error_counts(run).items()))
    return f"{total:,}{escape(share)}<br><small>{escape(kinds)}</small>"


def levels_table(runs: list[dict[str, Any]]) -> str:
    """One row per level: load, latency, errors and, when read, the server's view."""
    open_loop = any(r.get("mode") == "open" for r in runs)
    server = any(isinstance(r.get("server"), dict) for r in runs)
    cpu = any(isinstance(r.get("server"), dict)
              and r["server"].get("cpu_ms_per_request") is not None for r in runs)
    heads = ["Level", "Requests", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "Errors"]
    if open_loop:
        heads += ["Sent req/s", "Rate kept"]
    if server:
        heads += ["Batch mean", "Queue wait ms", "Predict ms"]
    if cpu:
        heads += ["Server CPU ms/req"]
    rows = []
    for run in sorted(runs, key=plots.level_value):
        lat = run.get("latency_ms") or {}
        s: dict[str, Any] = run["server"] if isinstance(run.get("server"), dict) else {}
        cells = [escape(level_label(run)), fmt(run.get("requests"), 0), fmt(run.get("rps")),
                 *(fmt_ms(lat.get(k)) for k in ("p50", "p90", "p99", "max")), error_cell(run)]
        if open_loop:
            kept_rate = run.get("kept_rate")
            kept = DASH if kept_rate is None else "yes" if kept_rate else "<strong>no</strong>"
            cells += [fmt(run.get("sent_rate")), kept]
        if server:
            cells += [fmt(s.get("batch_mean")), fmt_ms(s.get("queue_wait_ms_mean")),
                      fmt_ms(s.get("predict_ms_mean"))]
        if cpu:
            cells += [fmt(s.get("cpu_ms_per_request"), 2)]
        rows.append("<tr>" + "".join(
            f"<td{'' if i == 0 else ' class=num'}>{c}</td>" for i, c in enumerate(cells)) + "</tr>")
    head = "".join(f"<th{'' if i == 0 else ' class=num'}>{h}</th>" for i, h in enumerate(heads))
    return (f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def figure(kind: str, svg: str, caption: str) -> str:
    """A plot with its caption; ``caption`` is HTML already."""
    return (f'<figure data-plot="{kind}" class="plot">{svg}'
            f"<figcaption>{caption}</figcaption></figure>")


def find_max_block(result: dict[str, Any]) -> str:
    """The find-max search: its answer in words, its steps as a table and a plot."""
    slo = num(result.get("slo_p99_ms"))
    target = f"p99 \N{LESS-THAN OR EQUAL TO} {slo:g} ms" if math.isfinite(slo) else "the target"
    best = num(result.get("best_rate"))
    answer = (f"Best rate that met {target}: {best:g} requests/s." if math.isfinite(best)
              else f"No rate met {target}.")
    parts = ["<h3>Highest rate within the latency target</h3>",
             f'<p class="answer" data-find-max="answer">{escape(answer)}</p>']
    steps = [s for s in result.get("steps") or [] if isinstance(s, dict)]
    svg = plots.find_max(result)
    if svg:
        parts.append(figure("find-max", svg, f"p99 latency at each rate tried, against "
                            f"{escape(target)} (dashed line)."))
    if steps:
        parts.append(levels_table(steps))
    return "".join(parts)


def model_section(index: int, name: str, runs: list[dict[str, Any]],
                  result: dict[str, Any] | None) -> str:
    """Everything measured on one model."""
    parts = [f'<section class="model" id="model-{index}" data-model="{escape(name)}">',
             f"<h2>Model <code>{escape(name)}</code></h2>"]
    if runs:
        parts.append(levels_table(runs))
        for mode in dict.fromkeys(str(r.get("mode")) for r in runs):
            svg = plots.throughput([r for r in runs if str(r.get("mode")) == mode])
            level = "asked rate" if mode == "open" else "concurrent connections"
            if svg:
                parts.append(figure("throughput", svg, f"Throughput (top) and latency "
                                    f"percentiles (bottom) against {level}."))
        svg = plots.latency_distribution(runs)
        parts.append(figure("latency-distribution", svg,
                            "Latency by percentile, one line per level; the x axis spreads "
                            "the tail (90%, 99%, 99.9%, ...) as HdrHistogram plots do.")
                     if svg else '<p class="none">No latency percentiles were recorded.</p>')
        svg = plots.batch_sizes(runs)
        parts.append(figure("batch-sizes", svg, "Batch sizes the server formed, as a share of "
                            "its batches, per level.")
                     if svg else '<p class="none">No server metrics were read, so batch sizes '
                                 'are unknown.</p>')
        svg = plots.errors(runs)
        parts.append(figure("errors", svg, "Failed requests per level, by HTTP status or "
                            "socket error.") if svg else '<p class="none">No errors.</p>')
    if result is not None:
        parts.append(find_max_block(result))
    parts.append("</section>")
    return "\n".join(parts)


def header(doc: dict[str, Any]) -> str:
    """What was measured, how, when and on what machine."""
    target = doc.get("target") or {}
    gen = doc.get("generator") or {}
    machine = doc.get("machine") or {}
    settings = doc.get("settings") or {}
    steps = [s for found in (doc.get("find_max") or {}).values() for s in found.get("steps", [])]
    cores = [num(r.get("generator_cores")) for r in [*(doc.get("runs") or []), *steps]]
    cores = [c for c in cores if math.isfinite(c)]
    cpus = num(machine.get("cpus"))
    used = (f"; used up to {max(cores):.2f} cores" + (f" of {cpus:g}" if math.isfinite(cpus)
                                                       else "") if cores else "")
    url = target.get("url")
    rows = {
        "Target": f"{escape(str(target.get('kind', '')))} <code>"
                  f"{escape(str(target.get('value', '')))}</code>"
                  + (f" at <code>{escape(str(url))}</code>" if url else ""),
        "Command": f"<code>{escape(str(doc.get('command', '')))}</code>",
        "Date": escape(f"{doc.get('started', '')} to {doc.get('finished', '')}"),
        "Generator": escape(f"{gen.get('name', '?')} {gen.get('version', '')}, "
                            f"{gen.get('mode', '?')} mode{used}"),
        "Settings": escape(", ".join(f"{k}={v}" for k, v in settings.items() if v is not None)),
        "Machine": escape(f"{machine.get('cpus', '?')} CPUs, {machine.get('cpu_model', '?')}; "
                          f"Python {machine.get('python', '?')}; "
                          f"Corral {machine.get('corral', '?')}"),
    }
    return ('<dl class="header">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows.items())
            + "</dl>")


def render_html(doc: dict[str, Any]) -> str:
    """The report for a ``corral bench --json`` document, as one self-contained HTML page."""
    target = doc.get("target") or {}
    title = escape(f"Corral bench: {target.get('value', '')}".rstrip(": "))
    notes = [str(n) for n in doc.get("notes") or []]
    names = models_of(doc)
    find_max = doc.get("find_max") or {}
    body = [f"<h1>{title}</h1>", header(doc)]
    if notes:
        body.append('<section class="notes"><strong>Notes</strong><ul>'
                    + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul></section>")
    if len(names) > 1:
        body.append("<nav><ul>" + "".join(f'<li><a href="#model-{i}">{escape(n)}</a></li>'
                                          for i, n in enumerate(names)) + "</ul></nav>")
    if not names:
        body.append('<p class="none">No runs were recorded.</p>')
    for i, name in enumerate(names):
        runs = [r for r in doc.get("runs") or [] if str(r.get("model")) == name]
        body.append(model_section(i, name, runs, find_max.get(name)))
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
