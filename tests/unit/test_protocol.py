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
    VERSION,
    Command,
    Configure,
    Reply,
    Stop,
    Submit,
    Work,
    decode,
    encode,
)

MESSAGES = [
    Submit(id=1, model="iris:1", deadline=12.5, inputs=[b'{"a":1}', b'{"a":2}']),
    Submit(id=1, model="iris:1", deadline=12.5, lane="background", inputs=[b"{}"]),
    Submit(id=1, model="iris:1", deadline=12.5, size=17.0, inputs=[b"{}"]),
    Cancel(id=2),
    Result(id=4, outputs=[b"{}"]),
    Failure(id=5, error={"type": "timeout", "detail": "late"}),
    Hello(model="iris:1", replica=0, pid=123, state="loading", error="x"),
    Work(batch=7, groups=[2, 1], inputs=[b"1", b"2", b"3"]),
    Done(batch=7, model="iris:1", replica=0, pid=123, outcomes=[{"ok": 2}, {"error": {}}],
         outputs=[b"1", b"2"]),
    Stop(),
    Configure(model="iris:1", replicas=0, retry=True),
    Command(id=8, op="set_replicas", model="iris:1", replicas=3),
    Command(id=9, op="load", model="iris:1"),
    Reply(id=8, error=None),
    Reply(id=9, error={"type": "model-not-found", "detail": "no"}),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: object) -> None:
    assert decode(encode(msg)) == msg  # type: ignore[arg-type]


def frames(type_code: int, meta: object, *payload: bytes) -> list[bytes]:
    raw = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
    return [b"CR" + bytes((VERSION, type_code)), raw, *payload]


@pytest.mark.parametrize("bad", [
    [],
    [b"XX\x01\x01", b"{}"],
    [b"CR" + bytes((VERSION + 1, 1)), b"{}"],    # another protocol version
    [b"CR" + bytes((VERSION, 0x63)), b"{}"],     # unknown type
    frames(1, [1, 2]),                            # meta is not an object
    frames(1, b"{not json"),
    frames(1, {"id": 1, "model": "m:1", "deadline": "soon"}),  # wrong field types...
    frames(1, {"id": [1], "model": "m:1", "deadline": 1.0}),
    frames(1, {"id": 1, "model": 1, "deadline": 1.0}),
    frames(1, b'{"id": 1, "model": "m:1", "deadline": 1e999}'),  # not a finite number
    frames(2, {"id": True}),
    frames(1, {"id": 1, "model": "m:1", "deadline": 1.0, "size": -3}),  # sizes are positive
    frames(1, {"id": 1, "model": "m:1", "deadline": 1.0, "size": "long"}),
    frames(7, {"model": "m:1", "replica": 0, "pid": "123", "state": "ready"}),
    frames(8, {"batch": 1, "groups": ["2"]}),
    frames(9, {"batch": 1, "model": "m:1", "replica": 0, "pid": 1, "outcomes": [1]}),
    frames(11, {"model": "m:1", "replicas": 1, "retry": 1}),
    frames(12, {"id": 1, "op": "load", "model": "m:1", "replicas": "3"}),
    frames(13, {"id": 1, "error": "boom"}),
    frames(5, {"id": 1, "error": "boom"}),
    frames(2, {"id": 1, "extra": 2}),             # unknown field
    frames(2, {}),                                # missing field
    frames(2, b'{"id": 1, "pad": "' + b"x" * MAX_META + b'"}'),
])
def test_anything_else_is_a_protocol_error(bad: list[bytes]) -> None:
    with pytest.raises(ProtocolError):
        decode(bad)


def test_a_nesting_bomb_within_the_size_limit_is_a_protocol_error() -> None:
    bomb = b"[" * (MAX_META - 1)
    assert len(bomb) <= MAX_META  # so it passes the size check and reaches the parser
    with pytest.raises(ProtocolError, match="bad Submit message"):
        decode(frames(1, bomb))
