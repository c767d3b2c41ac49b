"""The ``corral bench --report`` page, opened from a file in a real headless Chromium.

The report must stand alone: every request other than the file itself is recorded
(so the test fails) and aborted. Chromium is launched as in test_docs_browser.py.
"""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from corral.bench.report import render_html
from tests.bench_docs import HOSTILE, RATE_NOTE, bench_doc
from tests.conftest import CORRAL, ROOT

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

from tests.browser import TIMEOUT_MS, browser  # noqa: E402, F401 (a fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PLOTS = {"iris": ["throughput", "latency-distribution", "batch-sizes", "errors"],
         HOSTILE: ["throughput", "latency-distribution", "find-max"]}


@contextmanager
def opened(browser: Any, path: Path) -> Iterator[tuple[Any, list[str], list[str]]]:
    """The report at ``path`` opened from its file: the page, what else it requested,
    and the errors it logged."""
    url = path.as_uri()
    context = browser.new_context(viewport={"width": 1280, "height": 1000},
                                  service_workers="block")
    context.set_default_timeout(TIMEOUT_MS)
    elsewhere: list[str] = []
    errors: list[str] = []

    def only_the_file(route: Any) -> None:
        if route.request.url == url:
            route.continue_()
        else:
            route.abort("blockedbyclient")

    context.route("**/*", only_the_file)
    page = context.new_page()
    page.on("request", lambda r: None if r.url == url else elsewhere.append(r.url))
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        page.goto(url, wait_until="load")
        yield page, elsewhere, errors
    finally:
        context.close()


@pytest.fixture
def report(browser: Any, tmp_path: Path) -> Iterator[tuple[Any, list[str], list[str]]]:
    """The report of bench_doc(), opened."""
    path = tmp_path / "report.html"
    path.write_text(render_html(bench_doc()), encoding="utf-8")
    with opened(browser, path) as found:
        yield found


def test_report_stands_alone_and_shows_the_results(
        report: tuple[Any, list[str], list[str]], tmp_path: Path) -> None:
    page, elsewhere, errors = report
    assert page.title() == "Corral bench: examples/quickstart.py"
    expect(page.locator(".notes")).to_contain_text(RATE_NOTE)

    sections = page.locator("section.model")
    expect(sections).to_have_count(2)
    assert [sections.nth(i).get_attribute("data-model") for i in range(2)] == list(PLOTS)
    for i, (model, plots) in enumerate(PLOTS.items()):
        section = sections.nth(i)
        expect(section.locator("h2")).to_have_text(f"Model {model}")
        assert section.locator("figure").evaluate_all(
            "els => els.map(e => e.dataset.plot)") == plots
        for plot in plots:
            figure = section.locator(f'figure[data-plot="{plot}"]')
            expect(figure.locator("figcaption")).not_to_be_empty()
            box = figure.locator("svg").bounding_box()
            assert box and box["width"] > 300 and box["height"] > 150, (model, plot, box)

    # The hostile model name is text: its script never ran, nor did the note's onerror.
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert page.evaluate("document.scripts.length") == 0

    iris = sections.nth(0).locator("table")
    for cell in ("1,233.2", "2,048.8", "20,445", "120"):
        expect(iris.locator("td", has_text=cell).first).to_be_visible()
    expect(iris).to_contain_text("503\N{MULTIPLICATION SIGN}45")
    expect(sections.nth(1).locator(".answer")).to_have_text(
        "Best rate that met p99 \N{LESS-THAN OR EQUAL TO} 50 ms: 200 requests/s.")
    expect(sections.nth(1)).to_contain_text("No errors.")

    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 50_000
    image = pytest.importorskip("PIL.Image").open(io.BytesIO(png)).convert("RGB")
    assert image.width == 1280 and image.height > 3000
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 100  # text, lines and bars, not a blank page

    assert elsewhere == [], f"the report requested: {elsewhere}"
    assert errors == [], errors


def test_report_of_a_real_run(browser: Any, tmp_path: Path) -> None:
    """corral bench against the quickstart app writes a report that renders: the model's
    table with the measured numbers, and the plots drawn from them."""
    path = tmp_path / "real.html"
    done = subprocess.run(
        [*CORRAL, "bench", str(ROOT / "examples" / "quickstart.py"), "-m", "iris",
         "-c", "1,4", "-d", "1s", "--warmup", "0", "--generator", "builtin", "-q",
         "--report", str(path), "--json", str(tmp_path / "real.json")],
        cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr
    doc = json.loads((tmp_path / "real.json").read_text())
    with opened(browser, path) as (page, elsewhere, errors):
        section = page.locator('section.model[data-model="iris"]')
        expect(section).to_have_count(1)
        assert section.locator("figure").evaluate_all(
            "els => els.map(e => e.dataset.plot)") == ["throughput", "latency-distribution",
                                                      "batch-sizes"]
        for figure in ("throughput", "latency-distribution", "batch-sizes"):
            box = section.locator(f'figure[data-plot="{figure}"] svg').bounding_box()
            assert box and box["width"] > 300 and box["height"] > 150, (figure, box)
        expect(section).to_contain_text("No errors.")
        for run in doc["runs"]:
            expect(section.locator("table").first).to_contain_text(f"{run['rps']:,.1f}")
        assert elsewhere == [] and errors == []
