"""The tables ``corral bench`` prints: one per model at the end of a run, and the change
per cell when comparing two runs."""

from __future__ import annotations

import math
from typing import Any

from rich.table import Table

from .results import Change, failures, level_label


def _ms(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:,.1f}"


def errors_text(run: dict[str, Any]) -> str:
    """Failures by kind: ``503×12 timeout×3``, or ``0``."""
    found = failures(run.get("statuses", {}), run.get("socket_errors", {}))
    return " ".join(f"{kind}×{n}" for kind, n in found.items()) or "0"


def model_table(model: str, runs: list[dict[str, Any]]) -> Table:
    """Requests/s, latency percentiles, errors and the server's side, a row per level."""
    cpu = any((run.get("server") or {}).get("cpu_ms_per_request") is not None for run in runs)
    late = any(run["mode"] == "open" and not run.get("kept_rate") for run in runs)
    table = Table(title=model, title_justify="left",
                  caption="* rate not kept (see the notes)" if late else None,
                  caption_justify="left")
    # Numbers never wrap: a narrow terminal cuts the table on the right instead.
    for name in ("level", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors",
                 "batch", "queue ms", "predict ms", *(["cpu ms/req"] if cpu else [])):
        table.add_column(name, justify="left" if name in ("level", "errors") else "right",
                         no_wrap=True)
    for run in runs:
        lat = run.get("latency_ms") or {}
        side = run.get("server") or {}
        level = level_label(run)
        if run["mode"] == "open" and not run.get("kept_rate"):
            level += " *"
        table.add_row(level, f"{run['rps']:,.1f}", _ms(lat.get("p50")), _ms(lat.get("p90")),
                      _ms(lat.get("p99")), _ms(lat.get("max")), errors_text(run),
                      _ms(side.get("batch_mean")), _ms(side.get("queue_wait_ms_mean")),
                      _ms(side.get("predict_ms_mean")),
                      *([_ms(side.get("cpu_ms_per_request"))] if cpu else []))
    return table


def summary_tables(doc: dict[str, Any]) -> list[Table]:
    by_model: dict[str, list[dict[str, Any]]] = {}
    for run in doc["runs"]:
        by_model.setdefault(run["model"], []).append(run)
    for model, found in (doc.get("find_max") or {}).items():
        by_model.setdefault(model, []).extend(found["steps"])
    return [model_table(m, runs) for m, runs in by_model.items()]


def compare_table(changes: list[Change], threshold: float) -> Table:
    table = Table(title=f"Change per cell (threshold {threshold:.0%})", title_justify="left")
    for name in ("model", "level", "metric", "old", "new", "change", "verdict"):
        table.add_column(name, justify="right" if name in ("old", "new", "change") else "left")
    units = {"rps": "req/s", "p50": "p50 ms", "p99": "p99 ms", "errors": "error rate",
             "max-rate": "max req/s"}
    for c in changes:
        spec = ".2%" if c.metric == "errors" else ",.1f"
        table.add_row(c.model, c.level, units[c.metric], format(c.old, spec),
                      format(c.new, spec), c.change,
                      "[red]REGRESSED[/red]" if c.regressed else "ok")
    return table
