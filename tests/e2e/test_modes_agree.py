"""In-process mode and process mode (`corral serve`) answer every input alike.

The same bytes go to ``/v1/models/echo-input/predict`` of an in-process app (Flask's
test client; the model runs in a thread and sees the object the request handler
validated) and of a real ``corral serve tests/apps/tricky.py`` (the replica process
validates the JSON document again). The model echoes what it saw, so any difference
in validation, in what crosses the process boundary, or in error reporting shows up
as a difference in status or body.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient

import corral
from corral.config import Settings
from tests.apps.tricky import EchoInputModel
from tests.conftest import APPS, ServerProcess, start_server, wait_client_ready

pytestmark = pytest.mark.slow

PREDICT = "/v1/models/echo-input/predict"
DROP = object()  # a field to leave out of a body

BASE: dict[str, Any] = {
    "when": "2024-01-02T03:04:05+01:00",
    "day": "2024-02-29",
    "color": "red",
    "count": 2**70,
    "ratio": 1e308,
    "text": "h\u00e9llo \U0001f40e \u4e2d\u6587 e\u0301 \u0000 \u202e",
    "amount": "12.3400",
    "from": "alice",
    "point": {"x": 1, "y": -0.0},
    "ids": [1, 2, 3],
    "mode": "fast",
    "tag": "  MiXeD Case\t ",
}


def obj(**changes: Any) -> dict[str, Any]:
    """BASE with some fields changed (``from_`` for "from"), or left out with DROP."""
    out = dict(BASE)
    for key, value in changes.items():
        key = "from" if key == "from_" else key
        if value is DROP:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def enc(value: Any, ascii_only: bool = False) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode()


# Raw JSON text: the bytes the client writes, not what json.dumps would write.
RAW_VALID = (
    b'{"when": "2024-01-02T03:04:05+01:00", "day": "2024-02-29", "color": "green",\n'
    b' "count": 1180591620717411303424, "ratio": 1e308, "text": "\\u00e9\\ud83d\\udc0e\\u0000",\n'
    b' "amount": 12.3400, "from": "bob", "point": {"x": -9223372036854775809, "y": -0.0,\n'
    b' "label": "q"}, "ids": [0, -1, 18446744073709551616], "mode": "exact",\n'
    b' "tag": "\\tTAB\\n", "secret": "s3cret", "extras": ["a", ""], "note": null, "limit": 0}'
)
RAW_BASE = enc(BASE)[:-1]  # BASE without its closing brace, to append raw members to

BODIES: list[Any] = [
    # -- valid single objects ------------------------------------------------------
    pytest.param(enc(BASE), id="base"),
    pytest.param(enc(BASE, ascii_only=True), id="base-ascii-escapes"),
    pytest.param(RAW_VALID, id="raw-valid"),
    pytest.param(b"  \n\t" + enc(BASE) + b"\n  ", id="whitespace-around"),
    pytest.param(RAW_BASE + b', "ratio": 5e-324}', id="raw-ratio-denormal-duplicate-key"),
    pytest.param(enc(obj(ratio=5e-324)), id="ratio-denormal"),
    pytest.param(enc(obj(ratio=-0.0)), id="ratio-negative-zero"),
    pytest.param(enc(obj(ratio=-1e308)), id="ratio-minus-1e308"),
    pytest.param(enc(obj(ratio=2**70)), id="ratio-big-int"),
    pytest.param(enc(obj(ratio=1.7976931348623157e308)), id="ratio-max-float"),
    pytest.param(RAW_BASE + b', "ratio": 1E+2}', id="raw-ratio-exponent"),
    pytest.param(RAW_BASE + b', "ratio": 0.1000000000000000055511151231257827}',
                 id="raw-ratio-long-decimal"),
    pytest.param(enc(obj(count=10**100)), id="count-googol"),
    pytest.param(enc(obj(count=-(2**70))), id="count-negative-big"),
    pytest.param(enc(obj(count=10**3998)), id="count-3999-digits"),
    pytest.param(RAW_BASE + b', "count": -0}', id="raw-count-negative-zero"),
    pytest.param(enc(obj(when="2024-01-02T03:04:05Z")), id="when-z"),
    pytest.param(enc(obj(when="2024-01-02T03:04:05")), id="when-naive"),
    pytest.param(enc(obj(when="2024-01-02T03:04:05.123456789+05:30")), id="when-nanoseconds"),
    pytest.param(enc(obj(when="2024-01-02 03:04:05-08:00")), id="when-space-separator"),
    pytest.param(enc(obj(when="2024-01-02T03:04:05-00:00")), id="when-minus-zero-offset"),
    pytest.param(enc(obj(when="2024-01-02")), id="when-date-only"),
    pytest.param(enc(obj(when="2024-01-02T03:04:05+23:59")), id="when-max-offset"),
    pytest.param(enc(obj(amount="1e5")), id="amount-exponent-string"),
    pytest.param(enc(obj(amount="-0")), id="amount-negative-zero"),
    pytest.param(enc(obj(amount=5)), id="amount-int"),
    pytest.param(enc(obj(amount=1e308)), id="amount-1e308"),
    pytest.param(RAW_BASE + b', "amount": 0.1000000000000000055511151231257827}',
                 id="raw-amount-long-decimal"),
    pytest.param(enc(obj(note=None)), id="note-null"),
    pytest.param(enc(obj(note="\U0001f600")), id="note-emoji"),
    pytest.param(enc(obj(secret="s3cret", extras=["x", "\u00e9"], limit=-1)), id="defaults-set"),
    pytest.param(enc(obj(ids=[])), id="ids-empty"),
    pytest.param(enc(obj(point={"x": 0, "y": 1, "label": "\u0301"})), id="point-label"),
    pytest.param(enc(obj(tag="   ")), id="tag-blank"),
    pytest.param(enc(obj(tag="\u0130STANBUL")), id="tag-dotted-capital-i"),
    pytest.param(enc(obj(text="\u0000" * 3 + "\ufeff" + "\U0010ffff")), id="text-controls"),
    pytest.param(enc(obj(text="\u00e9")), id="text-precomposed"),
    # -- invalid single objects ----------------------------------------------------
    pytest.param(enc(obj(count="5")), id="count-string"),
    pytest.param(enc(obj(count=5.0)), id="count-float"),
    pytest.param(enc(obj(count=True)), id="count-bool"),
    pytest.param(enc(obj(count=1e308)), id="count-1e308"),
    pytest.param(RAW_BASE + b', "count": ' + b"9" * 4001 + b"}", id="raw-count-4001-digits"),
    pytest.param(enc(obj(ratio="1.5")), id="ratio-string"),
    pytest.param(enc(obj(ratio=True)), id="ratio-bool"),
    pytest.param(RAW_BASE + b', "ratio": 1e309}', id="raw-ratio-overflow"),
    pytest.param(RAW_BASE + b', "ratio": NaN}', id="raw-ratio-nan"),
    pytest.param(RAW_BASE + b', "ratio": -Infinity}', id="raw-ratio-minus-infinity"),
    pytest.param(enc(obj(amount="NaN")), id="amount-nan-string"),
    pytest.param(enc(obj(amount="abc")), id="amount-not-a-number"),
    pytest.param(enc(obj(amount=True)), id="amount-bool"),
    pytest.param(enc(obj(when=1700000000)), id="when-unix-int"),
    pytest.param(enc(obj(when="2024-01-02T23:59:60Z")), id="when-leap-second"),
    pytest.param(enc(obj(when="2024-01-02T03:04:05+24:00")), id="when-offset-24h"),
    pytest.param(enc(obj(when="yesterday")), id="when-word"),
    pytest.param(enc(obj(day="2023-02-29")), id="day-not-a-date"),
    pytest.param(enc(obj(day="2024-01-02T00:00:00")), id="day-datetime"),
    pytest.param(enc(obj(day=0)), id="day-int"),
    pytest.param(enc(obj(day="20240102")), id="day-compact"),
    pytest.param(enc(obj(color="RED")), id="color-upper"),
    pytest.param(enc(obj(color="purple")), id="color-unknown"),
    pytest.param(enc(obj(color=1)), id="color-int"),
    pytest.param(enc(obj(mode="slow")), id="mode-literal-wrong"),
    pytest.param(enc(obj(mode=None)), id="mode-null"),
    pytest.param(enc(obj(from_=DROP, sender="alice")), id="alias-by-python-name"),
    pytest.param(enc(obj(sender="alice")), id="alias-and-python-name"),
    pytest.param(enc(obj(from_=DROP)), id="alias-missing"),
    pytest.param(enc(obj(from_=5)), id="alias-wrong-type"),
    pytest.param(enc(obj(note=5)), id="note-int"),
    pytest.param(enc(obj(tag=5)), id="tag-int"),
    pytest.param(enc(obj(secret=5)), id="secret-int"),
    pytest.param(enc(obj(extras=[1])), id="extras-int"),
    pytest.param(enc(obj(limit="10")), id="limit-string"),
    pytest.param(enc(obj(ids=[1, "2", 3.0, True, None])), id="ids-mixed"),
    pytest.param(enc(obj(ids=None)), id="ids-null"),
    pytest.param(enc(obj(ids={"0": 1})), id="ids-object"),
    pytest.param(enc(obj(point={"x": "1", "y": 2})), id="point-x-string"),
    pytest.param(enc(obj(point={"y": 1})), id="point-missing-x"),
    pytest.param(enc(obj(point={"x": 1, "y": 1, "z": 0})), id="point-extra"),
    pytest.param(enc(obj(point={"x": 1.5, "y": 1, "label": None})), id="point-two-errors"),
    pytest.param(enc(obj(point=[1, 2])), id="point-array"),
    pytest.param(enc(obj(bogus=1)), id="extra-field"),
    pytest.param(enc(obj(when=DROP, day=DROP)), id="missing-fields"),
    pytest.param(b"{}", id="empty-object"),
    pytest.param(enc(obj(extras=json.loads("[" * 40 + "]" * 40))), id="too-deep"),
    pytest.param(RAW_BASE + b', "text": "\\ud800"}', id="raw-lone-surrogate"),
    pytest.param(RAW_BASE + b', "text": "\xff\xfe"}', id="raw-invalid-utf8"),
    pytest.param(b"\xef\xbb\xbf" + enc(BASE), id="utf8-bom"),
    pytest.param(RAW_BASE + b", }", id="raw-trailing-comma"),
    pytest.param(b"5", id="number-body"),
    pytest.param(b'"text"', id="string-body"),
    pytest.param(b"null", id="null-body"),
    pytest.param(b"", id="empty-body"),
    # -- arrays --------------------------------------------------------------------
    pytest.param(enc([BASE]), id="array-one"),
    pytest.param(enc([BASE, obj(color="green", count=-1, tag="X")]), id="array-two"),
    pytest.param(enc([obj(count=i, ratio=i / 3) for i in range(11)]), id="array-over-max-size"),
    pytest.param(b"[" + RAW_VALID + b", " + RAW_VALID + b"]", id="array-raw-valid"),
    pytest.param(b"[" + RAW_BASE + b', "ratio": 5e-324, "count": 1e0}]',
                 id="array-raw-duplicate-keys-bad-count"),
    pytest.param(b"[" + RAW_BASE + b', "amount": 12.3400}]', id="array-raw-amount-number"),
    pytest.param(b"[" + RAW_BASE + b', "amount": 0.1000000000000000055511151231257827}]',
                 id="array-raw-amount-long-decimal"),
    pytest.param(b"[" + RAW_BASE + b', "ratio": -0.0, "count": -0}]', id="array-raw-zeros"),
    pytest.param(enc([BASE, obj(count="5"), BASE]), id="array-one-bad-middle"),
    pytest.param(enc([obj(point={"x": "1"}), BASE, obj(color="RED", from_=DROP)]),
                 id="array-nested-errors"),
    pytest.param(enc([BASE, 5, None, [], "x"]), id="array-non-objects"),
    pytest.param(b"[]", id="array-empty"),
    pytest.param(b"[[]]", id="array-of-array"),
    pytest.param(b"[" + RAW_BASE + b', "text": "\\ud800"}]', id="array-lone-surrogate"),
    pytest.param(b"[" + RAW_BASE + b', "ratio": 1e309}]', id="array-ratio-overflow"),
    pytest.param(enc([obj(when=w) for w in ("2024-01-02T03:04:05Z", "2024-01-02T03:04:05",
                                            "2024-01-02T03:04:05.999999+14:00")]),
                 id="array-datetimes"),
    pytest.param(enc([obj(text=t) for t in ("\U0001f40e", "\u4e2d", "e\u0301", "\u0000")],
                     ascii_only=True), id="array-unicode-ascii-escapes"),
    pytest.param(enc([BASE] * 1025), id="array-over-max-items"),
]


@pytest.fixture(scope="module")
def in_process() -> Iterator[FlaskClient]:
    app = corral.Server([EchoInputModel]).create_app(Settings())
    client = app.test_client()
    try:
        wait_client_ready(client)
        yield client
    finally:
        app.extensions["corral.engine"].stop()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One `corral serve tests/apps/tricky.py` for the whole module."""
    server = start_server(tmp_path_factory.mktemp("tricky-serve"), str(APPS / "tricky.py"))
    try:
        yield server
    finally:
        server.stop()


def both(in_process: FlaskClient, served: ServerProcess,
         body: bytes) -> tuple[tuple[int, str, bytes], tuple[int, str, bytes]]:
    """(status, media type, raw body) from each mode, for the same bytes."""
    local = in_process.post(PREDICT, data=body, content_type="application/json")
    remote = requests.post(served.url + PREDICT, data=body,
                           headers={"Content-Type": "application/json"}, timeout=60)
    return ((local.status_code, local.mimetype or "", local.get_data()),
            (remote.status_code, remote.headers.get("Content-Type", "").split(";")[0],
             remote.content))


@pytest.mark.parametrize("body", BODIES)
def test_both_modes_give_the_same_answer(in_process: FlaskClient, served: ServerProcess,
                                         body: bytes) -> None:
    (l_status, l_type, l_raw), (r_status, r_type, r_raw) = both(in_process, served, body)
    mismatch = (f"in-process: {l_status} {l_raw[:2000]!r}\n"
                f"process:    {r_status} {r_raw[:2000]!r}")
    assert l_status == r_status, mismatch
    assert l_type == r_type, mismatch
    assert json.loads(l_raw) == json.loads(r_raw), mismatch
    assert l_raw == r_raw, mismatch  # also -0.0 vs 0.0, 1e308 vs 1e+308, key order
    assert l_status != 500, mismatch  # no input may crash the server


EXPECTED_BASE = {
    "seen": {
        "when": "2024-01-02T03:04:05+01:00",
        "day": "2024-02-29",
        "color": "red",
        "count": 2**70,
        "ratio": 1e308,
        "text": "h\u00e9llo \U0001f40e \u4e2d\u6587 e\u0301 \u0000 \u202e",
        "amount": "12.3400",
        "sender": "alice",
        "point": {"x": 1, "y": -0.0, "label": "p"},
        "ids": [1, 2, 3],
        "mode": "fast",
        "tag": "mixed case",
        "note": None,
        "limit": 10,
        "extras": [],
    },
    "types": {
        "when": "datetime", "day": "date", "color": "Color", "count": "int", "ratio": "float",
        "text": "str", "amount": "Decimal", "sender": "str", "point": "Point", "ids": "list",
        "mode": "str", "tag": "str", "note": "NoneType", "limit": "int", "extras": "list",
        "secret": "str",
    },
    "secret": "hidden",
    "when_offset_s": 3600.0,
    "count_repr": "1180591620717411303424",
    "ratio_repr": "1e+308",
    "amount_repr": "12.3400",
}


def test_valid_input_comes_through_exactly(in_process: FlaskClient,
                                           served: ServerProcess) -> None:
    """Not only alike: right. Both modes could be equally wrong otherwise."""
    for status, media_type, raw in both(in_process, served, enc(BASE)):
        assert (status, media_type) == (200, "application/json"), raw
        assert json.loads(raw) == EXPECTED_BASE
        assert b'"y":-0.0' in raw and b'"count":1180591620717411303424' in raw


def test_raw_json_numbers_come_through_exactly(in_process: FlaskClient,
                                               served: ServerProcess) -> None:
    for status, _, raw in both(in_process, served, RAW_VALID):
        assert status == 200, raw
        out = json.loads(raw)
        assert out["seen"]["count"] == 2**70 and out["count_repr"] == str(2**70)
        assert out["ratio_repr"] == "1e+308"
        assert out["seen"]["point"] == {"x": -9223372036854775809, "y": -0.0, "label": "q"}
        assert out["seen"]["ids"] == [0, -1, 2**64]
        assert out["seen"]["tag"] == "tab" and out["seen"]["sender"] == "bob"
        assert out["seen"]["text"] == "\u00e9\U0001f40e\u0000"
        assert out["secret"] == "s3cret" and "secret" not in out["seen"]
        assert out["seen"]["color"] == "green" and out["types"]["color"] == "Color"


def test_array_answers_in_order_and_names_the_bad_item(in_process: FlaskClient,
                                                       served: ServerProcess) -> None:
    good = both(in_process, served, enc([obj(count=i) for i in range(10)]))
    for status, _, raw in good:
        assert status == 200, raw
        assert [o["seen"]["count"] for o in json.loads(raw)] == list(range(10))
    bad = both(in_process, served, enc([BASE, obj(count="5"), BASE]))
    for status, _, raw in bad:
        assert status == 422, raw
        assert [e["loc"] for e in json.loads(raw)["errors"]] == [[1, "count"]]
    alias = both(in_process, served, enc(obj(from_=DROP, sender="alice")))
    for status, _, raw in alias:
        assert status == 422, raw
        errors = {(tuple(e["loc"]), e["type"]) for e in json.loads(raw)["errors"]}
        assert errors == {(("from",), "missing"), (("sender",), "extra_forbidden")}


def test_concurrent_requests_batched_together_agree(in_process: FlaskClient,
                                                    served: ServerProcess) -> None:
    """Many bodies at once, so that inputs of different requests share a predict() call
    (max_size 8): each still gets the answer it gets alone, in both modes."""
    bodies = [p.values[0] for p in BODIES] * 2
    alone = [in_process.post(PREDICT, data=b, content_type="application/json") for b in bodies]
    expected = [(r.status_code, r.get_data()) for r in alone]
    app = in_process.application

    def local(body: bytes) -> tuple[int, bytes]:
        r = app.test_client().post(PREDICT, data=body, content_type="application/json")
        return r.status_code, r.get_data()

    def remote(body: bytes) -> tuple[int, bytes]:
        r = requests.post(served.url + PREDICT, data=body,
                          headers={"Content-Type": "application/json"}, timeout=60)
        return r.status_code, r.content

    with ThreadPoolExecutor(24) as pool:
        got_local = list(pool.map(local, bodies))
        got_remote = list(pool.map(remote, bodies))
    for i, want in enumerate(expected):
        assert got_local[i] == want, (i, got_local[i][1][:500], want[1][:500])
        assert got_remote[i] == want, (i, got_remote[i][1][:500], want[1][:500])
