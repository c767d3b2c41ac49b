"""The Swagger UI page at /docs, driven in a real headless Chromium by Playwright.

Each test starts the quickstart app with `corral serve` and opens /docs in a
fresh browser context. The browser is kept on the machine: every request whose
host is not 127.0.0.1 is recorded (so the test fails) and aborted (so nothing
leaves), and Chromium's own background traffic is switched off by flags.

Chromium is Debian's, not one downloaded by `playwright install`; set
CORRAL_TEST_CHROMIUM to use another binary. The tests skip when there is none.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.browser import TIMEOUT_MS, browser  # noqa: F401 (a fixture)
from tests.conftest import ROOT, ServerProcess

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LOCAL_HOST = "127.0.0.1"
IRIS_EXAMPLE = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


@dataclass
class DocsPage:
    """An open /docs page, with what it requested and what it logged as an error."""

    page: Any
    server: ServerProcess
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def off_host_requests(self) -> list[str]:
        """Requests whose URL has a host other than 127.0.0.1 (data: and blob: have none)."""
        return [url for url in self.requests
                if urlsplit(url).scheme not in ("data", "blob")
                and urlsplit(url).hostname != LOCAL_HOST]

    def operation(self, tag: str, operation_id: str) -> Any:
        """Expand one operation and return its block."""
        block = self.page.locator(f"#operations-{tag}-{operation_id}")
        expect(block).to_be_visible(timeout=TIMEOUT_MS)
        block.locator(".opblock-summary-control").click()
        expect(block.locator(".opblock-body")).to_be_visible(timeout=TIMEOUT_MS)
        return block

    def try_it_out(self, block: Any) -> None:
        """Put an expanded operation in "Try it out" mode.

        The page sets ``tryItOutEnabled``, so the operation usually opens in it
        already (its button then reads "Cancel"); otherwise click the button.
        """
        button = block.locator("button.try-out__btn")
        expect(button).to_be_visible(timeout=TIMEOUT_MS)
        if button.inner_text().strip() == "Try it out":
            button.click()
        expect(block.locator("button.execute")).to_be_visible(timeout=TIMEOUT_MS)

    def execute(self, block: Any, path: str) -> Any:
        """Click Execute and return the network response of the POST to `path`."""
        url = self.server.url + path
        with self.page.expect_response(lambda r: r.url == url and r.request.method == "POST",
                                       timeout=TIMEOUT_MS) as info:
            block.locator("button.execute").click()
        return info.value


@pytest.fixture
def docs(browser: Any, serve: Callable[..., ServerProcess]) -> Iterator[DocsPage]:
    """The quickstart served for real, its /docs page loaded and rendered."""
    server = serve(str(ROOT / "examples" / "quickstart.py"))
    context = browser.new_context(viewport={"width": 1280, "height": 1600}, service_workers="block")
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)

    def keep_local(route: Any) -> None:
        if urlsplit(route.request.url).hostname in (LOCAL_HOST, None):
            route.continue_()
        else:
            route.abort("blockedbyclient")

    context.route("**/*", keep_local)
    page = context.new_page()
    docs = DocsPage(page, server)
    page.on("request", lambda request: docs.requests.append(request.url))
    page.on("pageerror", lambda error: docs.errors.append(f"page error: {error}"))

    def on_console(msg: Any) -> None:
        if msg.type == "error":
            docs.errors.append(f"console error: {msg.text} ({msg.location.get('url')})")

    page.on("console", on_console)
    try:
        page.goto(server.url + "/docs", wait_until="load")
        # Swagger UI has fetched openapi.json and rendered it once the operations are there.
        try:
            expect(page.locator(".opblock").first).to_be_visible(timeout=TIMEOUT_MS)
        except AssertionError as exc:
            raise AssertionError(f"/docs rendered no operation; errors: {docs.errors}; "
                                 f"requests: {docs.requests}") from exc
        yield docs
    finally:
        context.close()


def provoked(error: str, docs: DocsPage, status: int, path: str) -> bool:
    """Whether `error` is the console error Chromium logs for the non-2xx fetch a test provoked."""
    return (error.startswith(f"console error: Failed to load resource: the server responded with a "
                             f"status of {status} ")
            and error.endswith(f"({docs.server.url}{path})"))


def containing(text: str) -> re.Pattern[str]:
    """For to_have_value: any value that contains `text`."""
    return re.compile(re.escape(text))


def shown_response(block: Any) -> tuple[str, Any]:
    """The status code and the parsed body that the live response panel shows."""
    row = block.locator(".live-responses-table tr.response")
    status = row.locator(".response-col_status").inner_text().strip()
    body = row.locator(".response-col_description .highlight-code code").first.inner_text()
    return status, json.loads(body)


def test_docs_page_loads_locally_without_errors(docs: DocsPage) -> None:
    page = docs.page
    expect(page.locator(".info .title")).to_contain_text("Corral", timeout=TIMEOUT_MS)
    expect(page.locator(".swagger-ui .errors-wrapper")).to_have_count(0)
    paths = {urlsplit(url).path for url in docs.requests}
    wanted = {"/docs", "/docs/swagger-ui.css", "/docs/swagger-ui-bundle.js", "/openapi.json"}
    assert wanted <= paths, docs.requests
    assert docs.off_host_requests() == [], f"requests left {LOCAL_HOST}: {docs.off_host_requests()}"
    assert docs.errors == [], docs.errors


def test_both_models_and_the_iris_example_are_shown(docs: DocsPage) -> None:
    page = docs.page
    for tag, description, operation_ids in [
        ("iris", "Iris species from flower measurements", ["predict_iris", "predict_iris_v1"]),
        ("text-stats", "Counts characters and words",
         ["predict_text_stats", "predict_text_stats_v1"]),
    ]:
        section = page.locator(f"#operations-tag-{tag}")
        expect(section).to_be_visible(timeout=TIMEOUT_MS)
        expect(section).to_contain_text(description)
        for operation_id in operation_ids:
            expect(page.locator(f"#operations-{tag}-{operation_id}")).to_be_visible()
    expect(page.locator("#operations-iris-predict_iris .opblock-summary-path")).to_have_text(
        "/v1/models/iris/predict")

    iris = docs.operation("iris", "predict_iris")
    docs.try_it_out(iris)
    body = iris.locator(".opblock-section-request-body")
    expect(body).to_contain_text("One input")  # the named example picked in the Examples list
    editor = body.locator("textarea.body-param__text")
    expect(editor).to_have_value(containing("5.1"), timeout=TIMEOUT_MS)
    assert json.loads(editor.input_value()) == IRIS_EXAMPLE

    text_stats = docs.operation("text-stats", "predict_text_stats")
    docs.try_it_out(text_stats)
    expect(text_stats.locator("textarea.body-param__text")).to_have_value(
        containing("Corral serves models."), timeout=TIMEOUT_MS)

    assert docs.off_host_requests() == []
    assert docs.errors == [], docs.errors


@pytest.mark.parametrize("sent, status, problem_type, shown", [
    pytest.param('{"sepal_length": "x"}', 422, "validation-error",
                 ["sepal_length", "Input should be a valid number", "Field required",
                  "sepal_width"],
                 id="invalid-input"),
    # Swagger UI does not check that a JSON request body parses: it sends the text as
    # typed, so the server's own answer to malformed JSON is what the user sees.
    pytest.param('{"sepal_length": ', 400, "invalid-json", ["invalid-json", "not valid JSON"],
                 id="malformed-json"),
])
def test_rejected_request_shows_why(docs: DocsPage, sent: str, status: int, problem_type: str,
                                    shown: list[str]) -> None:
    path = "/v1/models/iris/predict"
    iris = docs.operation("iris", "predict_iris")
    docs.try_it_out(iris)
    editor = iris.locator("textarea.body-param__text")
    editor.fill(sent)
    expect(editor).to_have_value(sent)

    response = docs.execute(iris, path)
    assert response.request.post_data == sent
    assert response.status == status

    panel = iris.locator(".live-responses-table tr.response")
    expect(panel.locator(".response-col_status")).to_have_text(str(status), timeout=TIMEOUT_MS)
    for text in shown:
        expect(panel.locator(".response-col_description")).to_contain_text(text, timeout=TIMEOUT_MS)
    expect(panel).to_contain_text("application/problem+json")  # the content-type header shown
    shown_status, problem = shown_response(iris)
    assert shown_status == str(status)
    assert problem["type"] == problem_type and problem["status"] == status
    if status == 422:
        assert [(e["loc"], e["msg"]) for e in problem["errors"]] == [
            (["sepal_length"], "Input should be a valid number"),
            (["sepal_width"], "Field required"),
            (["petal_length"], "Field required"),
            (["petal_width"], "Field required"),
        ]
    expect(iris.locator(".curl-command")).to_contain_text(sent)

    assert docs.off_host_requests() == []
    unexpected = [e for e in docs.errors if not provoked(e, docs, status, path)]
    assert unexpected == [], unexpected


def test_execute_with_the_example_predicts_setosa(docs: DocsPage) -> None:
    path = "/v1/models/iris/predict"
    iris = docs.operation("iris", "predict_iris")
    docs.try_it_out(iris)
    response = docs.execute(iris, path)
    assert json.loads(response.request.post_data) == IRIS_EXAMPLE
    assert response.status == 200

    panel = iris.locator(".live-responses-table tr.response")
    expect(panel.locator(".response-col_status")).to_have_text("200", timeout=TIMEOUT_MS)
    expect(panel.locator(".response-col_description")).to_contain_text("setosa", timeout=TIMEOUT_MS)
    status, body = shown_response(iris)
    assert status == "200"
    assert body["species"] == "setosa" and 0.5 < body["probability"] <= 1

    assert docs.off_host_requests() == []
    assert docs.errors == [], docs.errors


def test_a_job_submitted_and_read_back_from_the_page(docs: DocsPage) -> None:
    page = docs.page
    section = page.locator("#operations-tag-jobs")
    expect(section).to_be_visible(timeout=TIMEOUT_MS)
    for operation_id in ("submit_job_iris", "submit_job_iris_v1", "get_job", "cancel_job"):
        expect(page.locator(f"#operations-jobs-{operation_id}")).to_be_visible()

    submit = docs.operation("jobs", "submit_job_iris")
    docs.try_it_out(submit)
    response = docs.execute(submit, "/v1/models/iris/jobs")
    assert json.loads(response.request.post_data) == IRIS_EXAMPLE
    assert response.status == 202
    status, job = shown_response(submit)
    assert status == "202" and job["status"] in ("queued", "running", "succeeded")
    expect(submit.locator(".live-responses-table")).to_contain_text("location")

    get = docs.operation("jobs", "get_job")
    docs.try_it_out(get)
    get.locator("tr[data-param-name='id'] input").fill(job["id"])
    get.locator("tr[data-param-name='wait'] input").fill("10")
    url = f"{docs.server.url}/v1/jobs/{job['id']}?wait=10"
    with page.expect_response(lambda r: r.url == url, timeout=TIMEOUT_MS) as info:
        get.locator("button.execute").click()
    assert info.value.status == 200
    expect(get.locator(".live-responses-table tr.response .response-col_status")).to_have_text(
        "200", timeout=TIMEOUT_MS)
    status, done = shown_response(get)
    assert done["status"] == "succeeded" and done["result"]["species"] == "setosa"

    assert docs.off_host_requests() == []
    assert docs.errors == [], docs.errors
