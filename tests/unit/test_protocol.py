"""The wire format: round trips, and refusal of anything that is not a Corral message."""

from __future__ import annotations

import json

import pytest

from corral.transport.protocol import (
    MAX_META,
    Cancel,
    Done,
    Failure,
    Hello,
    ProtocolError,
    Result,
    StatusQuery,
    StatusReply,
    Submit,
    Work,
    decode,
    encode,
)

MESSAGES = [
    Submit(id=1, deadline=12.5, inputs=[b'{"a":1}', b'{"a":2}']),
    Cancel(id=2),
    StatusQuery(id=3),
    Result(id=4, outputs=[b"{}"]),
    Failure(id=5, error={"type": "timeout", "detail": "late"}),
    StatusReply(id=6, state="ready", replicas_ready=2, error=None),
    Hello(replica=0, pid=123, state="loading", error="x"),
    Work(batch=7, groups=[2, 1], inputs=[b"1", b"2", b"3"]),
    Done(batch=7, replica=0, pid=123, outcomes=[{"ok": 2}, {"error": {}}], outputs=[b"1", b"2"]),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: object) -> None:
    assert decode(encode(msg)) == msg  # type: ignore[arg-type]


def frames(type_code: int, meta: object, *payload: bytes) -> list[bytes]:
    raw = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
    return [b"CR" + bytes((1, type_code)), raw, *payload]


@pytest.mark.parametrize("bad", [
    [],
    [b"XX\x01\x01", b"{}"],
    [b"CR\x02\x01", b"{}"],                      # another protocol version
    [b"CR\x01\x63", b"{}"],                      # unknown type
    frames(1, [1, 2]),                            # meta is not an object
    frames(1, b"{not json"),
    frames(1, b"[" * 100_000),                    # nesting bomb
    frames(1, {"id": 1, "deadline": "soon"}),     # wrong field types...
    frames(1, {"id": [1], "deadline": 1.0}),
    frames(1, b'{"id": 1, "deadline": 1e999}'),  # not a finite number
    frames(2, {"id": True}),
    frames(7, {"replica": 0, "pid": "123", "state": "ready"}),
    frames(8, {"batch": 1, "groups": ["2"]}),
    frames(9, {"batch": 1, "replica": 0, "pid": 1, "outcomes": [1]}),
    frames(5, {"id": 1, "error": "boom"}),
    frames(2, {"id": 1, "extra": 2}),             # unknown field
    frames(2, {}),                                # missing field
    frames(2, b'{"id": 1, "pad": "' + b"x" * MAX_META + b'"}'),
])
def test_anything_else_is_a_protocol_error(bad: list[bytes]) -> None:
    with pytest.raises(ProtocolError):
        decode(bad)
