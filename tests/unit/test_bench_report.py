"""The HTML report of ``corral bench``, checked as text: structure, escaping, no links out."""

from __future__ import annotations

import copy
import math
import re
from collections import Counter
from html import escape
from typing import Any

import pytest

from corral.bench.report import render_html
from tests.bench_docs import HOSTILE, HOSTILE_NOTE, RATE_NOTE, bench_doc


@pytest.fixture(scope="module")
def html() -> str:
    return render_html(bench_doc())


def test_title_header_and_notes(html: str) -> None:
    assert "<title>Corral bench: examples/quickstart.py</title>" in html
    for text in ("corral bench examples/quickstart.py --report out.html", "built-in 0.1.0",
                 "used up to 0.31 cores of 2", "Test CPU @ 2.0GHz", "Python 3.11.7",
                 "Corral 0.1.0", "2026-12-03T17:20:00+00:00"):
        assert text in html, text
    assert f"<li>{escape(RATE_NOTE)}</li>" in html


def test_one_section_per_model_with_its_plots(html: str) -> None:
    models = re.findall(r'<section class="model" id="model-\d+" data-model="([^"]*)"', html)
    assert models == ["iris", escape(HOSTILE)]
    plots = Counter(re.findall(r'<figure data-plot="([a-z-]+)"', html))
    # iris: closed loop with server metrics and errors; HOSTILE: open loop, no server
    # metrics, no errors, a find-max search.
    assert plots == {"throughput": 2, "latency-distribution": 2, "batch-sizes": 1,
                     "errors": 1, "find-max": 1}
    assert html.count("<svg") == sum(plots.values())
    assert html.count("<figcaption>") == sum(plots.values())
    hostile = html[html.index(f'data-model="{escape(HOSTILE)}"'):]
    assert "No errors." in hostile and "batch sizes are unknown" in hostile
    assert "Best rate that met p99 \N{LESS-THAN OR EQUAL TO} 50 ms: 200 requests/s." in hostile


def test_tables_show_the_numbers(html: str) -> None:
    for cell in ("1,233.2", "2,048.8", "12,345", "20,445", "305.1", "310.0", "11.8", "4.10",
                 "9.80", "0.71"):
        assert f"<td class=num>{cell}</td>" in html, cell
    assert "503\N{MULTIPLICATION SIGN}45, timeout\N{MULTIPLICATION SIGN}3" in html
    assert "<td class=num><strong>no</strong></td>" in html  # 400/s was not kept


def test_every_string_from_the_document_is_escaped(html: str) -> None:
    assert HOSTILE not in html and HOSTILE_NOTE not in html
    assert escape(HOSTILE) in html and escape(HOSTILE_NOTE) in html
    assert "<script" not in html.replace(escape("<script"), "")


def test_nothing_is_fetched(html: str) -> None:
    assert not re.search(r"<(script|link|img|iframe|object|embed|image)\b", html)
    assert "@import" not in html and "@font-face" not in html
    # The only links are to anchors in the page (and inside each SVG).
    assert set(re.findall(r'href="(.)', html)) == {"#"}
    assert set(re.findall(r"url\((.)", html)) == {"#"}
    # The one URL is the target's, shown as text.
    assert re.findall(r"https?://[^\s<\"]*", html) == ["http://127.0.0.1:40123"]


def test_svg_ids_are_unique_across_figures(html: str) -> None:
    ids = Counter(re.findall(r'\sid="([^"]+)"', html))
    assert [i for i, n in ids.items() if n > 1] == []
    for ref in set(re.findall(r'(?:href="#|url\(#)([^")]+)', html)):
        assert ref in ids or ref.startswith("model-"), ref


def test_same_document_renders_the_same(html: str) -> None:
    assert render_html(bench_doc()) == html


def edge_cases() -> dict[str, dict[str, Any]]:
    """Documents with the pieces a real run may lack."""
    base = bench_doc()
    cases: dict[str, dict[str, Any]] = {}

    doc = copy.deepcopy(base)
    for run in doc["runs"]:
        run["server"] = None
        run["percentiles"] = []
    doc["find_max"] = None
    doc["notes"] = []
    cases["no-server-no-percentiles"] = doc

    doc = copy.deepcopy(base)
    doc["runs"] = [doc["runs"][0]]
    doc["find_max"] = {"iris": {"slo_p99_ms": 1, "best_rate": None, "steps": []}}
    cases["one-level-no-rate-met"] = doc

    doc = copy.deepcopy(base)
    for run in doc["runs"]:
        run.update(requests=0, rps=0.0, errors=0, statuses={}, percentiles=[],
                   latency_ms={}, generator_cores=None)
    cases["zero-requests"] = doc

    doc = copy.deepcopy(base)
    for run in doc["runs"]:
        run["rps"] = math.nan
        run["latency_ms"] = {k: math.nan for k in run["latency_ms"]}
        run["percentiles"] = [[p, math.nan] for p, _ in run["percentiles"]]
        if run["server"]:
            run["server"]["batch_mean"] = math.nan
            run["server"]["batch_hist"] = {k: math.nan for k in run["server"]["batch_hist"]}
    cases["nan-values"] = doc

    doc = copy.deepcopy(base)
    doc["runs"] = []
    doc["find_max"] = None
    cases["no-runs"] = doc
    return cases


@pytest.mark.parametrize("name", list(edge_cases()))
def test_incomplete_documents_still_render(name: str) -> None:
    html = render_html(edge_cases()[name])
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    if name == "no-server-no-percentiles":
        assert "data-plot=\"batch-sizes\"" not in html
        assert "data-plot=\"latency-distribution\"" not in html
        assert "No latency percentiles were recorded." in html
    if name == "one-level-no-rate-met":
        assert "No rate met p99 \N{LESS-THAN OR EQUAL TO} 1 ms." in html
    if name == "zero-requests":
        assert "No errors." in html
    if name == "no-runs":
        assert "No runs were recorded." in html
