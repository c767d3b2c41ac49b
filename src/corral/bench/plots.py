"""The plots of the ``corral bench`` HTML report, each drawn by matplotlib as an SVG string.

Figures are built with :class:`matplotlib.figure.Figure` directly, never through pyplot,
so no global figure state is kept. Text is drawn as paths (``svg.fonttype = "path"``), so
the SVG needs no font, and every element id is prefixed per figure, so that several SVGs
can sit in one HTML page without one figure's glyphs or clip paths replacing another's.

Each function takes the runs of one model (dicts in the ``corral bench --json`` format,
see :mod:`corral.bench.results`) and returns an ``<svg>`` element, or ``None`` when there
is nothing to draw. matplotlib is imported inside the functions, so importing this module
is cheap.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from .results import failures, level_label

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Without these matplotlib writes Dublin Core metadata, with URLs and today's date.
NO_METADATA: dict[str, Any] = {"Format": None, "Type": None, "Creator": None, "Date": None}
WIDTH_IN = 7.5


def num(value: Any) -> float:
    """``value`` as a float; NaN when it is missing or not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def level_value(run: dict[str, Any]) -> float:
    """Where a run sits on a level axis: its rate (open loop) or its concurrency."""
    return num(run.get("rate") if run.get("mode") == "open" else run.get("concurrency"))


def plain(text: str) -> str:
    """``text`` as matplotlib should draw it: no mathtext, never hidden from a legend."""
    text = text.replace("$", r"\$")
    return " " + text if text.startswith("_") else text


def style() -> AbstractContextManager[None]:
    """matplotlib settings for drawing and saving the report's figures.

    They are matplotlib's global rcParams for the duration of the ``with`` block, so two
    threads must not draw reports at once (``corral bench`` draws one, at the end).
    """
    import matplotlib

    # svg.hashsalt makes the clip path ids, and so the whole SVG, the same on every render.
    return matplotlib.rc_context({
        "svg.fonttype": "path", "svg.hashsalt": "corral-bench", "font.size": 9.0,
        "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
        "axes.spines.right": False})


def new_figure(height_in: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(WIDTH_IN, height_in), layout="constrained")


def to_svg(fig: Figure) -> str:
    """The figure as an ``<svg>`` element for inlining: no XML prolog, ids made unique."""
    buf = io.StringIO()
    with style():
        fig.savefig(buf, format="svg", metadata=NO_METADATA)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    # HTML puts <svg> in the SVG namespace (and xlink:href in XLink's) by itself.
    svg = re.sub(r'\s+xmlns(?::xlink)?="[^"]*"', "", svg, count=2)
    ids = set(re.findall(r'\sid="([^"]+)"', svg))
    # Named after the content: the same report renders the same, and two figures share
    # a prefix only when they are the same figure, ids and definitions alike.
    prefix = "plot-" + hashlib.sha1(svg.encode(), usedforsecurity=False).hexdigest()[:10] + "-"

    def rename(match: re.Match[str]) -> str:
        head, name = match.group(1), match.group(2)
        return head + prefix + name if name in ids else match.group(0)

    return re.sub(r'(\sid="|href="#|url\(#)([^")]+)', rename, svg)


def positive_log_x(ax: Axes, xs: list[float]) -> None:
    """A log x axis when the levels are positive and span a wide range (1, 4, 16, 64)."""
    finite = [x for x in xs if math.isfinite(x)]
    if finite and min(finite) > 0 and max(finite) / min(finite) >= 8:
        from matplotlib.ticker import FixedLocator, NullLocator

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(sorted(set(finite))))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{x:g}" for x in sorted(set(finite))])


def throughput(runs: list[dict[str, Any]]) -> str | None:
    """Throughput above, latency percentiles below, against the level (runs of one mode)."""
    runs = sorted((r for r in runs if math.isfinite(level_value(r))), key=level_value)
    if not runs:
        return None
    open_loop = runs[0].get("mode") == "open"
    xs = [level_value(r) for r in runs]
    with style():
        fig = new_figure(5.2)
        top, bottom = fig.subplots(2, 1, sharex=True)
        top.plot(xs, [num(r.get("rps")) for r in runs], marker="o", label="answered req/s")
        if open_loop:
            top.plot(xs, [num(r.get("sent_rate")) for r in runs], marker=".", linestyle=":",
                     label="sent req/s")
            top.plot(xs, xs, color="grey", linewidth=0.8, linestyle="--", label="asked rate")
        top.set_ylabel("requests/s")
        top.set_ylim(bottom=0)
        top.legend(loc="best")
        for key in ("p50", "p90", "p99"):
            bottom.plot(xs, [num(r.get("latency_ms", {}).get(key)) for r in runs], marker="o",
                        label=key)
        bottom.set_ylabel("latency (ms)")
        bottom.set_ylim(bottom=0)
        bottom.set_xlabel("asked rate (requests/s)" if open_loop else "concurrent connections")
        bottom.legend(loc="best")
        positive_log_x(bottom, xs)
    return to_svg(fig)


# Percent points shown on the latency distribution's x axis, at 1 / (1 - p).
DISTRIBUTION_TICKS = ((0.0, "0%"), (90.0, "90%"), (99.0, "99%"), (99.9, "99.9%"),
                      (99.99, "99.99%"), (99.999, "99.999%"))


def latency_distribution(runs: list[dict[str, Any]]) -> str | None:
    """Latency by percentile, one line per level, on HdrHistogram's 1 / (1 - p) axis.

    The 100th percentile (the maximum) has no place on that axis; the tables show it.
    """
    curves: list[tuple[str, list[float], list[float]]] = []
    for run in sorted(runs, key=level_value):
        points = [(num(p[0]), num(p[1])) for p in run.get("percentiles") or []
                  if isinstance(p, (list, tuple)) and len(p) == 2]
        points = [(p, ms) for p, ms in points if 0 <= p < 100 and math.isfinite(ms)]
        if points:
            curves.append((level_label(run), [1 / (1 - p / 100) for p, _ in points],
                           [ms for _, ms in points]))
    if not curves:
        return None
    from matplotlib.ticker import FixedLocator, NullLocator

    with style():
        fig = new_figure(3.8)
        ax = fig.subplots()
        for label, xs, ys in curves:
            ax.plot(xs, ys, marker=".", label=plain(label))
        top = max(max(xs) for _, xs, _ in curves)
        ticks = [(1 / (1 - p / 100), text) for p, text in DISTRIBUTION_TICKS
                 if 1 / (1 - p / 100) <= top * 1.01]
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator([x for x, _ in ticks]))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([text for _, text in ticks])
        ax.set_xlabel("percentile")
        ax.set_ylabel("latency (ms)")
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left", title="level")
    return to_svg(fig)


def batch_sizes(runs: list[dict[str, Any]]) -> str | None:
    """Share of batches per batch size bucket, one bar per level (from the server's metrics)."""
    hists = [(level_label(r), r["server"]["batch_hist"]) for r in sorted(runs, key=level_value)
             if isinstance(r.get("server"), dict)
             and isinstance(r["server"].get("batch_hist"), dict)]
    hists = [(label, h) for label, h in hists if any(num(v) > 0 for v in h.values())]
    if not hists:
        return None
    buckets: list[str] = []
    for _, hist in hists:
        buckets += [str(b) for b in hist if str(b) not in buckets]
    used = [i for i, b in enumerate(buckets) if any(num(h.get(b)) > 0 for _, h in hists)]
    buckets = buckets[:used[-1] + 1]  # the largest buckets are usually all empty
    width = 0.8 / len(hists)
    with style():
        fig = new_figure(3.4)
        ax = fig.subplots()
        for i, (label, hist) in enumerate(hists):
            counts = [c if c > 0 else 0.0 for c in (num(hist.get(b)) for b in buckets)]  # no NaN
            total = sum(counts)
            shares = [c / total * 100 for c in counts]
            ax.bar([j + (i - (len(hists) - 1) / 2) * width for j in range(len(buckets))], shares,
                   width=width, label=plain(label))
        ax.set_xticks(range(len(buckets)), [plain(b) for b in buckets])
        ax.set_xlabel("batch size")
        ax.set_ylabel("% of batches")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="level")
    return to_svg(fig)


def error_counts(run: dict[str, Any]) -> dict[str, int]:
    """A run's failures by kind (see results.failures), skipping counts that are not
    numbers in a hand-edited document."""
    def counts(part: str) -> dict[str, Any]:
        return {k: n for k, n in (run.get(part) or {}).items() if num(n) > 0}

    return failures(counts("statuses"), counts("socket_errors"))


def errors(runs: list[dict[str, Any]]) -> str | None:
    """Failed requests per level, stacked by status or socket error."""
    runs = sorted(runs, key=level_value)
    per_run = [error_counts(r) for r in runs]
    kinds = sorted({k for counts in per_run for k in counts})
    if not kinds:
        return None
    labels = [plain(level_label(r)) for r in runs]
    with style():
        fig = new_figure(3.2)
        ax = fig.subplots()
        base = [0.0] * len(runs)
        for kind in kinds:
            heights = [float(counts.get(kind, 0)) for counts in per_run]
            ax.bar(range(len(runs)), heights, bottom=base, width=0.6, label=plain(kind))
            base = [b + h for b, h in zip(base, heights)]
        ax.set_xticks(range(len(runs)), labels)
        ax.set_xlabel("level")
        ax.set_ylabel("failed requests")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="status")
    return to_svg(fig)


def find_max(result: dict[str, Any]) -> str | None:
    """p99 latency of each step of a find-max search against its rate, with the SLO line."""
    steps = [s for s in result.get("steps") or [] if math.isfinite(num(s.get("rate")))]
    if not steps:
        return None
    slo = num(result.get("slo_p99_ms"))
    best = num(result.get("best_rate"))
    ordered = sorted(steps, key=lambda s: num(s.get("rate")))
    with style():
        fig = new_figure(3.4)
        ax = fig.subplots()
        ax.plot([num(s["rate"]) for s in ordered],
                [num(s.get("latency_ms", {}).get("p99")) for s in ordered],
                marker="o", label="p99 at step")
        if math.isfinite(slo):
            ax.axhline(slo, color="tab:red", linestyle="--", label=f"target p99 {slo:g} ms")
        if math.isfinite(best):
            ax.axvline(best, color="tab:green", linestyle=":", label=f"best rate {best:g}/s")
        ax.set_xlabel("asked rate (requests/s)")
        ax.set_ylabel("p99 latency (ms)")
        ax.set_ylim(bottom=0)
        ax.legend(loc="best")
    return to_svg(fig)
