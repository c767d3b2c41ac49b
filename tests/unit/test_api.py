"""The HTTP API through Flask's test client, with models in-process (real threads)."""

from __future__ import annotations

import gzip
import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, request
from flask.testing import FlaskClient

import corral
from corral.config import Settings
from tests.conftest import wait_client_ready as wait_ready
from tests.fixtures import (
    BadOutputModel,
    BrokenLoadModel,
    EchoV1Model,
    EchoV2Model,
    EchoV10Model,
    SlowLoadModel,
    SumItemsModel,
    SumModel,
)

PROBLEM = "application/problem+json"


def make_app(*models: type[corral.Model], **settings: Any) -> Flask:
    app = corral.Server(list(models)).create_app(Settings(**settings))
    wait_ready(app.test_client())
    return app


@pytest.fixture
def app() -> Iterator[Flask]:
    SumModel.batch_sizes.clear()
    SumModel.seen.clear()
    # No warm-up: BadOutputModel's predict() would fail it (warm-up has its own test).
    app = make_app(SumModel, SumItemsModel, EchoV1Model, EchoV2Model, EchoV10Model,
                   BrokenLoadModel, BadOutputModel, max_body_bytes=4096, max_items=5,
                   warm_up=False)
    yield app
    app.extensions["corral.engine"].stop()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def post(client: FlaskClient, path: str, body: Any, **kw: Any) -> Any:
    return client.post(path, data=json.dumps(body), content_type="application/json", **kw)


def assert_problem(resp: Any, status: int, type_: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == PROBLEM
    body = resp.get_json(force=True)
    assert body["type"] == type_ and body["status"] == status and body["detail"]
    assert "Traceback" not in resp.get_data(as_text=True)
    return dict(body)


# -- predict ---------------------------------------------------------------------------


def test_one_object_gives_one_output(client: FlaskClient) -> None:
    resp = post(client, "/v1/models/sum/predict", {"values": [1, 2, 3.5]})
    assert resp.status_code == 200
    assert resp.get_json()["total"] == 6.5


def test_array_gives_outputs_in_order(client: FlaskClient) -> None:
    resp = post(client, "/v1/models/sum/predict", [{"values": [i, i]} for i in range(5)])
    assert resp.status_code == 200
    assert [r["total"] for r in resp.get_json()] == [0, 2, 4, 6, 8]


def test_default_and_explicit_versions(client: FlaskClient) -> None:
    assert post(client, "/v1/models/echo/predict", {"word": "abc"}).get_json() == {"upper": "CBA"}
    v1 = post(client, "/v1/models/echo/versions/1/predict", {"word": "abc"})
    assert v1.get_json() == {"upper": "ABC"}
    v10 = post(client, "/v1/models/echo/versions/10/predict", {"word": "abc"})
    assert v10.get_json() == {"upper": "abc"}  # dict outputs are validated and accepted


# -- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize("raw, detail", [
    (b"{bad", "not valid JSON"),
    (b"", "empty"),
    (b'{"values": [NaN]}', "NaN"),
    (b"[" * 40 + b"]" * 40, "nested deeper than 32"),
    (b"[" * 1500 + b"]" * 1500, "nested deeper"),
    (b"\xff\xfe", "UTF-8"),
    (b'\xef\xbb\xbf{"values": [1]}', "BOM"),
    ('{"values": [1]}'.encode("utf-16"), "UTF-8"),
    (b'{"values": [1e999]}', "out of range"),
    (b'{"values": [1], "x": "\\ud800"}', "JSON"),
])
def test_malformed_json_is_400(client: FlaskClient, raw: bytes, detail: str) -> None:
    resp = client.post("/v1/models/sum/predict", data=raw, content_type="application/json")
    body = assert_problem(resp, 400, "invalid-json")
    assert detail in body["detail"]


def test_wrong_content_type_is_415(client: FlaskClient) -> None:
    resp = client.post("/v1/models/sum/predict", data="values=1", content_type="text/plain")
    body = assert_problem(resp, 415, "unsupported-media-type")
    assert "text/plain" in body["detail"]
    assert_problem(client.post("/v1/models/sum/predict", data=b"{}"), 415,
                   "unsupported-media-type")


def test_oversized_body_is_413(client: FlaskClient) -> None:
    resp = post(client, "/v1/models/sum/predict", {"values": [1.0] * 2000})
    body = assert_problem(resp, 413, "payload-too-large")
    assert "4096" in body["detail"]


def test_oversized_body_without_length_is_413(client: FlaskClient) -> None:
    # A chunked body: no Content-Length, the server marks the input as terminated.
    body = io.BytesIO(b'{"values": [' + b"1.0," * 2000 + b"1.0]}")
    resp = client.post("/v1/models/sum/predict", input_stream=body,
                       content_type="application/json",
                       environ_overrides={"wsgi.input_terminated": True})
    assert_problem(resp, 413, "payload-too-large")


@pytest.mark.parametrize("body, locs", [
    ({"values": "x"}, [["values"]]),
    ({}, [["values"]]),
    ({"values": []}, [["values"]]),
    ({"values": [1], "delay": 99}, [["delay"]]),
    ({"values": [1], "surprise": 1}, [["surprise"]]),
    ({"values": ["1"]}, [["values", 0]]),  # strict JSON: a string is not a number
    ([{"values": [1]}, {"values": "x"}, {}], [[1, "values"], [2, "values"]]),
    ([{"values": [1]}, 7], [[1]]),
])
def test_invalid_inputs_are_422_naming_each_field(client: FlaskClient, body: Any,
                                                   locs: list[list[Any]]) -> None:
    resp = post(client, "/v1/models/sum/predict", body)
    problem = assert_problem(resp, 422, "validation-error")
    assert [e["loc"] for e in problem["errors"]] == locs
    assert all(e["msg"] and e["type"] for e in problem["errors"])


@pytest.mark.parametrize("body, msg", [
    ([], "at least 1"),
    ([{"values": [1]}] * 6, "at most 5"),
    ("text", "got a string"),
    (None, "got null"),
    (3, "got a number"),
])
def test_wrong_shapes_are_422(client: FlaskClient, body: Any, msg: str) -> None:
    problem = assert_problem(post(client, "/v1/models/sum/predict", body), 422,
                             "validation-error")
    assert msg in problem["detail"] or msg in problem["errors"][0]["msg"]


def test_unknown_model_and_version_are_404_listing_known(client: FlaskClient) -> None:
    problem = assert_problem(post(client, "/v1/models/nope/predict", {}), 404, "model-not-found")
    assert "echo" in problem["detail"] and "sum" in problem["detail"]
    problem = assert_problem(post(client, "/v1/models/echo/versions/3/predict", {"word": "a"}),
                             404, "version-not-found")
    assert "1, 2, 10" in problem["detail"]
    assert_problem(client.get("/v1/models/nope"), 404, "model-not-found")
    assert_problem(client.get("/nowhere"), 404, "not-found")


def test_wrong_method_is_405_with_allow(client: FlaskClient) -> None:
    resp = client.delete("/v1/models")
    assert_problem(resp, 405, "method-not-allowed")
    assert "GET" in resp.headers["Allow"]
    assert_problem(client.put("/v1/models/sum/predict"), 405, "method-not-allowed")
    wrong = client.get("/v1/models/sum/predict")
    assert_problem(wrong, 405, "method-not-allowed")
    assert "POST" in wrong.headers["Allow"] and "GET" not in wrong.headers["Allow"]


@pytest.mark.parametrize("value", ["abc", "0", "-1", "0.05", "nan", "inf"])
def test_bad_timeout_header_is_422(client: FlaskClient, value: str) -> None:
    resp = post(client, "/v1/models/sum/predict", {"values": [1]},
                headers={"X-Request-Timeout": value})
    problem = assert_problem(resp, 422, "validation-error")
    assert problem["errors"][0]["loc"] == ["header", "X-Request-Timeout"]


# -- model failures --------------------------------------------------------------------


def in_threads(*calls: Any) -> list[Any]:
    """Run callables at once; return their results in order."""
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
        time.sleep(0.02)  # keep arrival order; correctness does not depend on it
    for t in threads:
        t.join(30)
    return results


def test_poison_input_fails_alone_and_server_keeps_serving(app: Flask) -> None:
    def call(body: dict[str, Any]) -> Any:
        return lambda: post(app.test_client(), "/v1/models/sum/predict", body)

    # The first request holds the only replica, so the next three queue up and
    # form one batch when it is free.
    busy, good1, poison, good2 = in_threads(
        call({"values": [0], "delay": 0.5}),
        call({"values": [1]}), call({"values": [2], "poison": True}), call({"values": [3]}),
    )
    assert busy.status_code == 200
    assert good1.status_code == 200 and good1.get_json()["total"] == 1
    assert good2.status_code == 200 and good2.get_json()["total"] == 3
    problem = assert_problem(poison, 500, "model-error")
    assert problem["error_id"] in problem["detail"]
    assert "secret" not in poison.get_data(as_text=True)
    assert 3 in SumModel.batch_sizes  # the three did share a batch before isolation
    assert post(app.test_client(), "/v1/models/sum/predict", {"values": [4]}).status_code == 200


def test_model_invalid_input_is_422_with_its_message(client: FlaskClient) -> None:
    problem = assert_problem(post(client, "/v1/models/sum/predict", {"values": [1], "reject": True}),
                             422, "validation-error")
    assert "reject=true" in problem["detail"]
    # A validation error always lists its errors; the message is the entry's msg.
    assert problem["errors"] == [{"loc": [], "msg": "This input is rejected by the model: "
                                  "reject=true.", "type": "invalid_input"}]


def test_a_failing_item_of_an_array_is_named(client: FlaskClient) -> None:
    body = [{"values": [1]}, {"values": [2], "poison": True}, {"values": [3], "reject": True}]
    problem = assert_problem(post(client, "/v1/models/sum/predict", body), 500, "model-error")
    assert problem["item"] == 1 and problem["detail"].startswith("Item 1: ")
    assert problem["error_id"] in problem["detail"]
    rejected = assert_problem(post(client, "/v1/models/sum/predict", [body[0], body[2]]), 422,
                              "validation-error")
    assert rejected["item"] == 1 and rejected["errors"][0]["loc"] == [1]


def test_a_model_may_answer_arrays_with_per_item_errors(client: FlaskClient) -> None:
    body = [{"values": [1]}, {"values": [2], "poison": True}, {"values": [3], "reject": True},
            {"values": [4]}]
    resp = post(client, "/v1/models/sum-items/predict", body)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    first, poisoned, rejected, last = resp.get_json()
    assert (first["total"], last["total"]) == (1, 4)
    assert poisoned["type"] == "model-error" and poisoned["status"] == 500
    assert poisoned["item"] == 1 and poisoned["error_id"]
    assert rejected["type"] == "validation-error" and rejected["errors"][0]["loc"] == [2]
    assert "secret" not in resp.get_data(as_text=True)
    # A single object still gets its error as the response.
    assert_problem(post(client, "/v1/models/sum-items/predict", body[1]), 500, "model-error")


def test_a_split_batch_logs_each_failure_on_its_own(app: Flask,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    body = [{"values": [1]}, {"values": [2], "poison": True}, {"values": [3], "poison": True}]
    with caplog.at_level("INFO", logger="corral"):
        post(app.test_client(), "/v1/models/sum/predict", body)
    splits = [r for r in caplog.records if "computing each input alone" in r.getMessage()]
    failures = [r for r in caplog.records if r.exc_info and "raised RuntimeError" in r.getMessage()]
    assert len(splits) == 1 and splits[0].exc_info is None  # one line, no traceback
    assert len(failures) == 2  # each failing input, under its own error id
    assert len({r.getMessage() for r in failures}) == 2
    for record in failures:
        text = logging.Formatter().formatException(record.exc_info)  # type: ignore[arg-type]
        assert "During handling of the above exception" not in text


def test_success_and_error_bodies_share_one_json_spacing(client: FlaskClient) -> None:
    ok = client.get("/v1/models").get_data(as_text=True)
    problem = post(client, "/v1/models/sum/predict", {"values": "x"}).get_data(as_text=True)
    for text in (ok, problem):
        assert '", "' not in text and '": ' not in text, text


def test_gzip_bodies_are_accepted_within_the_limit(client: FlaskClient) -> None:
    body = gzip.compress(json.dumps({"values": [1, 2]}).encode())
    resp = client.post("/v1/models/sum/predict", data=body, content_type="application/json",
                       headers={"Content-Encoding": "gzip"})
    assert resp.status_code == 200 and resp.get_json()["total"] == 3
    bomb = gzip.compress(b'{"values": [1], "pad": "' + b" " * 1_000_000 + b'"}')
    assert len(bomb) < 4096  # small on the wire, 1 MB inflated; the limit here is 4096
    assert_problem(client.post("/v1/models/sum/predict", data=bomb, content_type="application/json",
                               headers={"Content-Encoding": "gzip"}), 413, "payload-too-large")
    assert_problem(client.post("/v1/models/sum/predict", data=b"not gzip",
                               content_type="application/json",
                               headers={"Content-Encoding": "gzip"}), 400, "invalid-json")
    problem = assert_problem(client.post("/v1/models/sum/predict", data=b"{}",
                                         content_type="application/json",
                                         headers={"Content-Encoding": "br"}),
                             415, "unsupported-media-type")
    assert "'br'" in problem["detail"]


def test_openapi_examples_are_each_models_own() -> None:
    settings = Settings()
    doc = corral.Server([SumModel, EchoV1Model], title="Shop", version="2.3",
                        description="Our models.").create_app(settings)
    spec = doc.test_client().get("/openapi.json").get_json()
    doc.extensions["corral.engine"].stop()
    assert spec["info"] == {"title": "Shop", "version": "2.3", "description": "Our models."}

    def examples(path: str, status: str) -> dict[str, Any]:
        content = spec["paths"][path]["post"]["responses"][status]["content"]
        return {k: v["value"] for k, v in content["application/problem+json"]["examples"].items()}

    echo_422 = examples("/v1/models/echo/predict", "422")["validation-error"]
    assert [e["loc"] for e in echo_422["errors"]] == [[0, "word"]]  # echo's own field
    sum_422 = examples("/v1/models/sum/predict", "422")["validation-error"]
    assert [e["loc"] for e in sum_422["errors"]] == [[0, "values"]]
    overloaded = examples("/v1/models/sum/predict", "503")["overloaded"]
    assert f"at most {SumModel.batching.max_queue};" in overloaded["detail"]  # type: ignore[union-attr]
    for status, kind in (("500", "model-error"), ("503", "model-failed")):
        assert "sum:1" in examples("/v1/models/sum/predict", status)[kind]["detail"]
        assert "echo:1" in examples("/v1/models/echo/predict", status)[kind]["detail"]


def test_invalid_output_is_500(client: FlaskClient) -> None:
    problem = assert_problem(post(client, "/v1/models/bad-output/predict", {"word": "a"}), 500,
                             "model-error")
    assert problem["error_id"]


def test_failed_load_is_503_model_failed(client: FlaskClient) -> None:
    resp = post(client, "/v1/models/broken-load/predict", {"word": "a"})
    assert_problem(resp, 503, "model-failed")
    assert "Retry-After" not in resp.headers
    info = client.get("/v1/models/broken-load").get_json()
    assert info["versions"][0]["state"] == "failed"
    # The exception's type and message, under an error id; never the traceback.
    error = info["versions"][0]["error"]
    assert error.startswith("load() raised OSError: weights file missing: /secret/path (error id ")
    assert "Traceback" not in json.dumps(info) and "fixtures.py" not in json.dumps(info)
    assert error.rsplit("error id ", 1)[1].rstrip(")") in resp.get_json()["detail"]
    # Not ready while a declared model is failed, unless the settings say otherwise.
    assert client.get("/readyz").status_code == 503


def test_timeout_is_504_and_never_computed(app: Flask) -> None:
    def slow() -> Any:
        return post(app.test_client(), "/v1/models/sum/predict", {"values": [0], "delay": 1.0})

    def hurried() -> Any:
        return post(app.test_client(), "/v1/models/sum/predict", {"values": [424242]},
                    headers={"X-Request-Timeout": "0.25"})

    slow_resp, hurried_resp = in_threads(slow, hurried)
    assert slow_resp.status_code == 200
    assert_problem(hurried_resp, 504, "timeout")
    time.sleep(0.3)  # let the replica pick up whatever is left in the queue
    assert [424242] not in SumModel.seen


def test_full_queue_is_503_overloaded() -> None:
    app = make_app(SumModel, models={"sum": {"max_queue": 2}})
    try:
        def call(delay: float) -> Any:
            return lambda: post(app.test_client(), "/v1/models/sum/predict",
                                {"values": [1], "delay": delay})

        results = in_threads(call(0.5), *(call(0) for _ in range(5)))
        statuses = sorted(r.status_code for r in results)
        assert statuses.count(200) >= 3 and 503 in statuses
        rejected = next(r for r in results if r.status_code == 503)
        assert_problem(rejected, 503, "overloaded")
        assert rejected.headers["Retry-After"] == "1"
    finally:
        app.extensions["corral.engine"].stop()


def test_readiness_means_can_serve() -> None:
    failed_only = corral.Server([BrokenLoadModel]).create_app(Settings())
    tolerant = corral.Server([BrokenLoadModel, EchoV1Model]).create_app(
        Settings(ready_with_failed_models=True))
    try:
        for app, expected in ((failed_only, 503), (tolerant, 200)):
            client = app.test_client()
            deadline = time.monotonic() + 20
            while "loading" in {m["state"] for m in client.get("/readyz").get_json()["models"]}:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            ready = client.get("/readyz")
            assert ready.status_code == expected, ready.get_json()
            assert ready.get_json()["ready"] is (expected == 200)
    finally:
        for app in (failed_only, tolerant):
            app.extensions["corral.engine"].stop()


def test_loading_model_is_503_with_retry_after() -> None:
    SlowLoadModel.release.clear()
    app = corral.Server([SlowLoadModel, EchoV1Model]).create_app(Settings())
    client = app.test_client()
    try:
        resp = post(client, "/v1/models/slow-load/predict", {"word": "a"})
        assert_problem(resp, 503, "model-loading")
        assert int(resp.headers["Retry-After"]) >= 1
        ready = client.get("/readyz")
        assert ready.status_code == 503
        states = {m["name"]: m["state"] for m in ready.get_json()["models"]}
        assert states["slow-load"] == "loading"
        SlowLoadModel.release.set()
        wait_ready(client)
        assert post(client, "/v1/models/slow-load/predict", {"word": "a"}).status_code == 200
    finally:
        SlowLoadModel.release.set()
        app.extensions["corral.engine"].stop()


# -- listing, health, docs -------------------------------------------------------------


def test_model_listing_and_detail(client: FlaskClient) -> None:
    listing = client.get("/v1/models").get_json()
    names = [m["name"] for m in listing["models"]]
    assert names == ["bad-output", "broken-load", "echo", "sum", "sum-items"]
    echo = client.get("/v1/models/echo").get_json()
    assert echo["default_version"] == "2"
    assert [v["version"] for v in echo["versions"]] == ["1", "2", "10"]
    v2 = echo["versions"][1]
    assert v2["default"] and v2["state"] == "ready" and v2["replicas_ready"] == 1
    assert v2["input_schema"]["properties"]["word"]["maxLength"] == 50
    assert "upper" in v2["output_schema"]["properties"]
    sum_info = client.get("/v1/models/sum").get_json()["versions"][0]
    assert sum_info["batching"] == {"max_size": 8, "max_wait_ms": 20.0, "max_queue": 64,
                                    "timeout": 10.0}


def test_health_and_docs(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    docs = client.get("/docs")
    assert docs.status_code == 200 and b"swagger-ui-bundle.js" in docs.data
    with client.get("/docs/swagger-ui-bundle.js") as asset:
        assert asset.status_code == 200 and len(asset.data) > 100_000
    assert_problem(client.get("/docs/swagger-initializer.js"), 404, "not-found")  # not allowed
    assert b"http" not in docs.data  # every asset is local, by a relative URL
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"] == "3.1.0"
    assert "/v1/models/echo/versions/10/predict" in spec["paths"]


def test_server_is_a_wsgi_application(monkeypatch: pytest.MonkeyPatch) -> None:
    """`app.py:app` under any WSGI server: the Server builds its app from CORRAL_* itself."""
    from werkzeug.test import Client

    monkeypatch.setenv("CORRAL_MAX_ITEMS", "2")
    server = corral.Server([EchoV1Model])
    client = Client(server)
    deadline = time.monotonic() + 20
    while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.02)
    resp = client.post("/v1/models/echo/predict", json={"word": "wsgi"})
    assert resp.status_code == 200 and resp.get_json() == {"upper": "WSGI"}
    too_many = client.post("/v1/models/echo/predict", json=[{"word": "a"}] * 3)
    assert too_many.status_code == 422  # the environment's settings were applied


def test_large_array_is_split_into_batches_across_replicas_in_order() -> None:
    app = make_app(SumModel, models={"sum": {"replicas": 2, "max_size": 3}}, max_items=50)
    try:
        client = app.test_client()
        deadline = time.monotonic() + 20
        while client.get("/v1/models/sum").get_json()["versions"][0]["replicas_ready"] < 2:
            assert time.monotonic() < deadline, "second replica never became ready"
            time.sleep(0.02)
        SumModel.batch_sizes.clear()  # after each replica's warm-up
        resp = post(client, "/v1/models/sum/predict", [{"values": [i]} for i in range(20)])
        assert resp.status_code == 200
        assert [r["total"] for r in resp.get_json()] == list(range(20))
        assert max(SumModel.batch_sizes) == 3 and sum(SumModel.batch_sizes) == 20
    finally:
        app.extensions["corral.engine"].stop()


def test_model_output_that_json_cannot_carry_is_500(client: FlaskClient) -> None:
    problem = assert_problem(post(client, "/v1/models/sum/predict", {"values": [1e308, 1e308]}),
                             500, "model-error")
    assert problem["error_id"]


def test_array_larger_than_the_queue_is_422_not_a_retry_loop() -> None:
    app = make_app(SumModel, models={"sum": {"max_queue": 3}})
    try:
        resp = post(app.test_client(), "/v1/models/sum/predict", [{"values": [1]}] * 4)
        problem = assert_problem(resp, 422, "validation-error")
        assert "at most 3" in problem["detail"]
        spec = app.test_client().get("/openapi.json").get_json()
        body = spec["paths"]["/v1/models/sum/predict"]["post"]["requestBody"]
        assert body["content"]["application/json"]["schema"]["oneOf"][1]["maxItems"] == 3
    finally:
        app.extensions["corral.engine"].stop()


def test_invalid_input_raised_in_a_shared_batch_hits_only_its_request(app: Flask) -> None:
    def call(body: dict[str, Any]) -> Any:
        return lambda: post(app.test_client(), "/v1/models/sum/predict", body)

    busy, good, rejected = in_threads(call({"values": [0], "delay": 0.5}),
                                      call({"values": [1]}), call({"values": [2], "reject": True}))
    assert busy.status_code == 200 and good.status_code == 200
    assert_problem(rejected, 422, "validation-error")


def test_client_timeout_is_capped_by_the_model_timeout() -> None:
    app = make_app(SumModel, models={"sum": {"timeout": 0.3}})
    try:
        resp = post(app.test_client(), "/v1/models/sum/predict", {"values": [1], "delay": 1.0},
                    headers={"X-Request-Timeout": "60"})
        assert_problem(resp, 504, "timeout")
    finally:
        app.extensions["corral.engine"].stop()


def test_stopped_engine_refuses_with_retry_after() -> None:
    app = make_app(EchoV1Model)
    app.extensions["corral.engine"].stop()
    resp = post(app.test_client(), "/v1/models/echo/predict", {"word": "a"})
    assert_problem(resp, 503, "overloaded")
    assert resp.headers["Retry-After"] == "1"


def test_unexpected_server_error_is_a_problem_with_an_id() -> None:
    app = corral.Server([EchoV1Model]).create_app(Settings())
    try:
        @app.get("/boom")
        def boom() -> None:
            raise RuntimeError("internal detail")

        resp = app.test_client().get("/boom")
        problem = assert_problem(resp, 500, "internal-error")
        assert problem["error_id"] and "internal detail" not in resp.get_data(as_text=True)
        assert resp.status == "500 Internal Server Error"
    finally:
        app.extensions["corral.engine"].stop()


def test_slashes_and_huge_integers(client: FlaskClient) -> None:
    assert client.get("/v1/models/").status_code == 200
    assert_problem(client.get("/v1//models"), 404, "not-found")
    problem = assert_problem(client.post("/v1/models/sum/predict", data=b'{"values": [' +
                                         b"9" * 4050 + b"]}", content_type="application/json"),
                             400, "invalid-json")
    assert "digits" in problem["detail"] and "sys." not in problem["detail"]


@pytest.mark.parametrize("value, msg", [("abc", "must be a number"), ("1_0", "must be a number"),
                                        ("\u0663", "must be a number"),
                                        ("0.05", "at least 0.1")])
def test_timeout_header_messages(client: FlaskClient, value: str, msg: str) -> None:
    resp = post(client, "/v1/models/sum/predict", {"values": [1]},
                headers={"X-Request-Timeout": value.encode().decode("latin-1")})
    assert msg in assert_problem(resp, 422, "validation-error")["detail"]


def test_misspelt_overrides_are_refused() -> None:
    from corral.errors import StartupError

    with pytest.raises(StartupError, match="no model named 'nope'"):
        corral.Server([SumModel]).catalog(Settings(models={"nope": {"max_size": 2}}))
    with pytest.raises(ValueError, match="maxsize"):
        Settings(models={"sum": {"maxsize": 2}})


def test_description_is_the_model_docstring_only(client: FlaskClient) -> None:
    class Undocumented(EchoV1Model):
        name = "undocumented"

    Undocumented.__doc__ = None
    assert corral.Server([Undocumented]).catalog(Settings()).resolve("undocumented").description == ""
    assert client.get("/v1/models/sum").get_json()["description"].startswith("Adds numbers")


def test_corral_wsgi_application_serves_corral_app(monkeypatch: pytest.MonkeyPatch) -> None:
    """`corral.wsgi:application` for uWSGI, Waitress...: the app named by CORRAL_APP."""
    import importlib
    import sys

    from werkzeug.test import Client

    from corral.errors import StartupError

    sys.modules.pop("corral.wsgi", None)
    monkeypatch.delenv("CORRAL_APP", raising=False)
    unset = importlib.import_module("corral.wsgi")  # importable for its factory
    with pytest.raises(StartupError, match="Set CORRAL_APP"):
        unset.application
    sys.modules.pop("corral.wsgi", None)
    monkeypatch.setenv("CORRAL_APP", "tests.apps.fuzz:app")
    wsgi = importlib.import_module("corral.wsgi")
    try:
        client = Client(wsgi.application)
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "models never became ready"
            time.sleep(0.05)
        resp = client.post("/v1/models/echo/versions/1/predict", json={"word": "wsgi"})
        assert resp.status_code == 200 and resp.get_json() == {"upper": "WSGI"}
    finally:
        wsgi.application.extensions["corral.engine"].stop()
        sys.modules.pop("corral.wsgi", None)


# -- admin API -------------------------------------------------------------------------


def test_admin_api_is_off_without_a_token(client: FlaskClient) -> None:
    assert_problem(client.post("/v1/models/sum/unload"), 404, "not-found")
    spec = client.get("/openapi.json").get_json()
    assert not any(p.endswith("/unload") for p in spec["paths"])


def test_admin_api_loads_unloads_and_scales_with_the_token() -> None:
    app = make_app(SumModel, BrokenLoadModel, admin_token="s3cret")
    client = app.test_client()
    auth = {"Authorization": "Bearer s3cret"}
    try:
        no_token = assert_problem(client.post("/v1/models/sum/unload"), 401, "unauthorized")
        assert "Bearer" in no_token["detail"]
        assert client.post("/v1/models/sum/unload").headers["WWW-Authenticate"].startswith(
            "Bearer")
        assert_problem(client.post("/v1/models/sum/unload",
                                   headers={"Authorization": "Bearer nope"}), 403, "forbidden")
        assert_problem(client.post("/v1/models/nope/unload", headers=auth), 404,
                       "model-not-found")

        resp = client.post("/v1/models/sum/unload", headers=auth)
        assert resp.status_code == 202 and resp.get_json()["state"] == "unloaded"
        assert_problem(post(client, "/v1/models/sum/predict", {"values": [1]}), 503,
                       "model-unloaded")
        resp = client.post("/v1/models/sum/versions/1/load", headers=auth)
        assert resp.status_code == 202 and resp.get_json()["replicas"] == 1
        wait_ready(client)
        assert post(client, "/v1/models/sum/predict", {"values": [1]}).status_code == 200

        resp = client.put("/v1/models/sum/replicas", json={"replicas": 3}, headers=auth)
        assert resp.status_code == 202 and resp.get_json()["replicas"] == 3
        deadline = time.monotonic() + 20
        while client.get("/v1/models/sum").get_json()["versions"][0]["replicas_ready"] != 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        for bad in ({"replicas": -1}, {"replicas": 65}, {"replicas": "2"}, {"n": 2}, [2]):
            assert_problem(client.put("/v1/models/sum/replicas", json=bad, headers=auth), 422,
                           "validation-error")
        assert_problem(client.put("/v1/models/sum/replicas", data=b"{", headers=auth,
                                  content_type="application/json"), 400, "invalid-json")

        # A failed model is loaded again: load() runs again (and fails again).
        attempts = BrokenLoadModel.attempts
        assert client.post("/v1/models/broken-load/load", headers=auth).status_code == 202
        deadline = time.monotonic() + 20
        while BrokenLoadModel.attempts == attempts:
            assert time.monotonic() < deadline
            time.sleep(0.02)

        spec = client.get("/openapi.json").get_json()
        op = spec["paths"]["/v1/models/sum/replicas"]["put"]
        assert op["security"] == [{"adminToken": []}]
        assert spec["components"]["securitySchemes"]["adminToken"]["scheme"] == "bearer"
        assert {"202", "401", "403", "422"} <= set(op["responses"])
    finally:
        app.extensions["corral.engine"].stop()



def test_warm_up_runs_predict_once_before_ready_and_fails_a_model_that_cannot() -> None:
    SumModel.seen.clear()
    app = make_app(SumModel, BadOutputModel, EchoV1Model)
    client = app.test_client()
    try:
        assert SumModel.seen == [[1.0, 2.0, 3.0]]  # the schema's example, before any request
        info = client.get("/v1/models/bad-output").get_json()["versions"][0]
        assert info["state"] == "failed" and "load() raised ModelError" in info["error"]
        assert client.get("/v1/models/echo").get_json()["versions"][0]["state"] == "ready"
    finally:
        app.extensions["corral.engine"].stop()


def test_cors_is_off_by_default_and_answers_allowed_origins(client: FlaskClient) -> None:
    assert "Access-Control-Allow-Origin" not in client.get(
        "/v1/models", headers={"Origin": "https://app.example.com"}).headers
    app = make_app(EchoV1Model, cors_origins=["https://app.example.com"])
    cors = app.test_client()
    try:
        ok = post(cors, "/v1/models/echo/predict", {"word": "a"},
                  headers={"Origin": "https://app.example.com"})
        assert ok.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
        assert "Retry-After" in ok.headers["Access-Control-Expose-Headers"]
        preflight = cors.options("/v1/models/echo/predict", headers={
            "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        assert preflight.status_code == 200
        assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
        assert "Content-Type" in preflight.headers["Access-Control-Allow-Headers"]
        other = post(cors, "/v1/models/echo/predict", {"word": "a"},
                     headers={"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in other.headers
    finally:
        app.extensions["corral.engine"].stop()


def test_mounted_under_a_prefix_the_docs_and_document_point_there() -> None:
    from flask import Flask as FlaskApp
    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    from werkzeug.test import Client

    from corral.wsgi import create_app

    host = FlaskApp("host")

    @host.get("/")
    def home() -> str:
        return "host app"

    corral_app = create_app("tests.apps.fuzz:app")
    host.wsgi_app = DispatcherMiddleware(host.wsgi_app, {"/ml": corral_app})  # type: ignore[method-assign]
    client = Client(host)
    try:
        assert client.get("/").get_data(as_text=True) == "host app"
        page = client.get("/ml/docs").get_data(as_text=True)
        assert 'href="docs/swagger-ui.css"' in page and 'url: "openapi.json"' in page
        css = client.get("/ml/docs/swagger-ui.css")
        css.close()  # a file response
        assert css.status_code == 200
        spec = client.get("/ml/openapi.json").get_json()
        assert spec["servers"] == [{"url": "/ml"}]
        deadline = time.monotonic() + 20
        while client.get("/ml/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        resp = client.post("/ml/v1/models/echo/versions/1/predict", json={"word": "mounted"})
        assert resp.status_code == 200 and resp.get_json() == {"upper": "MOUNTED"}
    finally:
        corral_app.extensions["corral.engine"].stop()


def test_a_model_that_sizes_inputs_gets_batches_of_similar_size() -> None:
    from tests.fixtures import SizedModel

    app = make_app(SizedModel, warm_up=False)
    client = app.test_client()
    SizedModel.batches.clear()

    def send(words: int, delay: float = 0.0) -> None:
        resp = client.post("/v1/models/sized/predict",
                           json={"text": " ".join(["w"] * words), "delay": delay})
        assert resp.status_code == 200 and resp.get_json() == {"words": words}

    busy = threading.Thread(target=send, args=(1, 0.5))
    busy.start()
    time.sleep(0.2)  # the replica is busy: what follows queues
    senders = [threading.Thread(target=send, args=(n,)) for n in (10, 200, 11, 190, 12, 180)]
    for t in senders:
        t.start()
        time.sleep(0.01)
    for t in [busy, *senders]:
        t.join(10)
    assert SizedModel.batches[0] == [1]
    assert sorted(map(sorted, SizedModel.batches[1:])) == [[10, 11, 12], [180, 190, 200]]

    # A sizing function that raises: a 500 with an error id, nothing leaked, nothing queued.
    resp = client.post("/v1/models/sized/predict", json={"text": "unsizable"})
    assert resp.status_code == 500 and resp.get_json()["type"] == "model-error"
    assert "secret" not in resp.get_data(as_text=True) and resp.get_json()["error_id"]
    assert len(SizedModel.batches) == 3
    app.extensions["corral.engine"].stop()


def test_predict_below_flask_and_through_flask_answer_alike(client: FlaskClient,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    # "/predict/" is left to Flask's rule (strict_slashes off); "/predict" is answered
    # below Flask. Same status, body, headers (but the request id), errors and metrics.
    def count(status: str) -> float:
        line = f'corral_requests_total{{model="sum",status="{status}",version="1"}} '
        text = client.get("/metrics").get_data(as_text=True)
        return float(text.split(line)[1].split("\n")[0]) if line in text else 0.0

    before = count("200"), count("422")
    for body in ({"values": [1, 2]}, [{"values": [1]}, {"values": [3, 4]}], {"values": "x"},
                 "nope"):
        fast = post(client, "/v1/models/sum/predict", body, headers={"X-Request-ID": "r-1"})
        slow = post(client, "/v1/models/sum/predict/", body, headers={"X-Request-ID": "r-1"})
        assert (fast.status, fast.get_data(), fast.content_type) == \
            (slow.status, slow.get_data(), slow.content_type)
        assert fast.headers["X-Request-ID"] == slow.headers["X-Request-ID"] == "r-1"
        assert fast.headers["Content-Length"] == str(len(fast.get_data()))
    bad_id = post(client, "/v1/models/sum/predict", {"values": [1]},
                  headers={"X-Request-ID": "no spaces allowed"})
    assert bad_id.headers["X-Request-ID"] != "no spaces allowed"
    assert len(bad_id.headers["X-Request-ID"]) == 32
    unknown = post(client, "/v1/models/nope/versions/1/predict", {"values": [1]})
    assert_problem(unknown, 404, "model-not-found")
    assert "sum" in unknown.get_json()["detail"]
    assert (count("200") - before[0], count("422") - before[1]) == (5, 4)
    assert 'model="nope"' not in client.get("/metrics").get_data(as_text=True)


def _requests_counted(client: FlaskClient, model: str, status: str) -> float:
    line = f'corral_requests_total{{model="{model}",status="{status}",version="1"}} '
    text = client.get("/metrics").get_data(as_text=True)
    return float(text.split(line)[1].split("\n")[0]) if line in text else 0.0


def test_a_bug_on_the_predict_path_is_a_500_with_an_id(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(EchoV1Model, access_log=True, cors_origins=["https://app.example.com"])
    engine = app.extensions["corral.engine"]
    client = app.test_client()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("internal detail")

    try:
        engine.submit = broken
        before = _requests_counted(client, "echo", "500")
        with caplog.at_level(logging.INFO):
            resp = post(client, "/v1/models/echo/predict?x=1", {"word": "a"},
                        headers={"X-Request-ID": "bug-1", "Origin": "https://app.example.com"})
        problem = assert_problem(resp, 500, "internal-error")
        assert "internal detail" not in resp.get_data(as_text=True)
        assert resp.headers["X-Request-ID"] == "bug-1"
        assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
        assert _requests_counted(client, "echo", "500") == before + 1
        logged = [r for r in caplog.records if r.name == "corral.api.problems"]
        assert problem["error_id"] in logged[0].getMessage() and logged[0].exc_info
        access = [r.getMessage() for r in caplog.records if r.name == "corral.access"]
        # The inputs were valid: the line names the model, as for any error after that.
        assert access == [f'127.0.0.1 "POST /v1/models/echo/predict?x=1" 500 '
                          f'{access[0].split(" ")[4]} model=echo:1 batch=- id=bug-1']
    finally:
        app.extensions["corral.engine"].stop()


def test_access_log_lines_alike_below_and_through_flask(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(SumModel, access_log=True)
    client = app.test_client()
    try:
        for body in ({"values": [1, 2]}, {"values": "x"}, "nope"):
            for path in ("/v1/models/sum/predict", "/v1/models/sum/predict/"):
                caplog.clear()
                with caplog.at_level(logging.INFO, logger="corral.access"):
                    post(client, path + "?q=1", body, headers={"X-Request-ID": "same"})
                (line,) = [r for r in caplog.records if r.name == "corral.access"]
                words = line.getMessage().replace(path, "PATH").split(" ")
                del words[4]  # the latency
                shown = line.request  # type: ignore[attr-defined]
                if path.endswith("/"):
                    assert words == fast_words and shown["model"] == fast["model"]
                    assert shown["status"] == fast["status"]
                else:
                    fast_words, fast = words, shown
            assert ("model=-" in fast_words) == (body != {"values": [1, 2]})
    finally:
        app.extensions["corral.engine"].stop()


def test_hooks_added_to_the_app_run_for_predict_too() -> None:
    # A user's own before_request (an auth check, say) added after create_app() must not
    # be skipped by the predict path below Flask.
    app = corral.Server([EchoV1Model]).create_app(Settings())
    seen: list[str] = []
    try:
        client = app.test_client()

        @app.before_request
        def guard() -> Any:
            seen.append(request.path)
            if request.headers.get("Authorization") != "Bearer ok":
                return {"detail": "no"}, 401
            return None

        # The model may still be loading (no request could wait for it before the hook
        # was added): the allowed request is retried while it answers 503.
        deadline = time.monotonic() + 30
        while True:
            allowed = post(client, "/v1/models/echo/predict", {"word": "a"},
                           headers={"Authorization": "Bearer ok"})
            if allowed.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        refused = post(client, "/v1/models/echo/predict", {"word": "a"})
        assert refused.status_code == 401 and allowed.status_code == 200
        assert allowed.get_json()["upper"] == "A" and allowed.headers["X-Request-ID"]
        assert len(seen) >= 2 and set(seen) == {"/v1/models/echo/predict"}
    finally:
        app.extensions["corral.engine"].stop()


def test_status_lines_always_have_a_reason_phrase() -> None:
    from corral.api.problems import status_line

    assert status_line(422).startswith("422 Unprocessable ")
    assert status_line(499) == "499 Client Closed Request"
    assert status_line(599) == "599 Unknown"


def test_behind_proxies_the_log_names_the_client_they_name(caplog: pytest.LogCaptureFixture) -> None:
    # CORRAL_PROXY_HOPS=1: the client is the last address the one proxy added, on the
    # predict path below Flask as on Flask's own paths.
    app = make_app(EchoV1Model, access_log=True, proxy_hops=1)
    client = app.test_client()
    try:
        with caplog.at_level(logging.INFO, logger="corral.access"):
            post(client, "/v1/models/echo/predict", {"word": "a"},
                 headers={"X-Forwarded-For": "6.6.6.6, 10.1.2.3"})
            client.get("/v1/models", headers={"X-Forwarded-For": "6.6.6.6, 10.1.2.3"})
        lines = [r.getMessage() for r in caplog.records if r.name == "corral.access"]
        assert len(lines) == 2
        assert all(line.startswith('10.1.2.3 "') for line in lines), lines
    finally:
        app.extensions["corral.engine"].stop()


def test_a_failed_start_on_the_predict_path_is_a_500_with_an_id() -> None:
    app = make_app(EchoV1Model, cors_origins=["*"])  # served /readyz, no predict yet
    jobs = app.extensions["corral.jobs"]
    started = jobs.start

    def broken() -> None:
        raise RuntimeError("internal detail")

    try:
        jobs.start = broken
        resp = post(app.test_client(), "/v1/models/echo/predict", {"word": "a"},
                    headers={"X-Request-ID": "start-1", "Origin": "https://x.example"})
        problem = assert_problem(resp, 500, "internal-error")
        assert problem["error_id"] and "internal detail" not in resp.get_data(as_text=True)
        assert resp.headers["X-Request-ID"] == "start-1"
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        jobs.start = started  # the next request tries again, and is served
        assert post(app.test_client(), "/v1/models/echo/predict", {"word": "a"}).status_code \
            == 200
    finally:
        app.extensions["corral.engine"].stop()
