"""The wire format between HTTP workers, dispatchers and replicas.

Every message is a list of frames, carried whole over the Unix sockets between
Corral's processes (see :mod:`corral.transport.stream` for how they are framed)::

    frame 0  header   4 bytes: b"CR", protocol version (1 byte), message type (1 byte)
    frame 1  meta     a JSON object: the message's fields
    frame 2+ payload  zero or more opaque frames: one JSON document per input or output

Nothing is ever unpickled: meta is JSON and payload frames are handed on or parsed
as JSON by whoever owns their type. A frame that does not parse is a ProtocolError,
and the receiver drops the message.

Messages, by direction::

    HTTP worker -> dispatcher   Submit, Cancel
    dispatcher -> HTTP worker   Result, Failure
    replica -> dispatcher       Hello (start-up, loaded, load failed, and idle heartbeat), Done
    dispatcher -> replica       Work, Stop
    supervisor -> dispatcher    Configure
    anyone -> supervisor        Command (load, unload, set replicas), answered by Reply

One dispatcher serves every model of an instance: messages that concern a model
name it as ``name:version``.

The in-process mode passes the same message objects through memory, never encoded
(:mod:`corral.inprocess.engine`); there, ``inputs`` are validated pydantic objects
rather than JSON documents, hence their ``list[Any]`` type.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

MAGIC = b"CR"
VERSION = 3  # 3: Submit carries size


class ProtocolError(Exception):
    """A message that is not in this protocol (wrong magic, version, type or fields)."""


@dataclass
class Message:
    TYPE: ClassVar[int] = 0
    # Name of the field carried as payload frames (a list of bytes), if any.
    PAYLOAD: ClassVar[str | None] = None


@dataclass
class Submit(Message):
    """Compute these inputs (JSON documents) with ``model`` before ``deadline`` (time.monotonic()).

    ``lane`` is ``live`` (someone waits over HTTP) or ``background`` (a job).
    """

    TYPE = 1
    PAYLOAD = "inputs"
    id: int
    model: str
    deadline: float
    lane: str = "live"
    request_id: str = ""  # for the logs of the batches that compute it
    size: float | None = None  # the largest input_size() of its inputs, if the model has one
    inputs: list[Any] = field(default_factory=list)


@dataclass
class Cancel(Message):
    """The client gave up on request ``id``: drop it if it is still queued."""

    TYPE = 2
    id: int


@dataclass
class Result(Message):
    """One output (a JSON document) per input of request ``id``, in order.

    ``errors`` lists the inputs that failed alone (``{"item": i, **error}``); their
    output frames are empty.
    """

    TYPE = 4
    PAYLOAD = "outputs"
    id: int
    batch: int = 0  # the size of the largest batch that computed part of it
    errors: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[bytes] = field(default_factory=list)


@dataclass
class Failure(Message):
    """Request ``id`` failed; ``error`` is CorralError.to_dict() data."""

    TYPE = 5
    id: int
    error: dict[str, Any]


@dataclass
class Hello(Message):
    """A replica's state: ``loading``, ``ready`` (also sent as an idle heartbeat), ``failed``,
    or ``retiring`` (it has computed its ``max_requests``: stop it after its batch)."""

    TYPE = 7
    model: str
    replica: int
    pid: int
    state: str
    error: str | None = None


@dataclass
class Work(Message):
    """A batch: ``groups`` gives how many of ``inputs`` belong to each request, in order;
    ``request_ids`` the ids of the requests in it, for the replica's logs."""

    TYPE = 8
    PAYLOAD = "inputs"
    batch: int
    groups: list[int]
    request_ids: list[str] = field(default_factory=list)
    inputs: list[Any] = field(default_factory=list)


@dataclass
class Done(Message):
    """Outcome of a batch, one per group: ``{"ok": n}`` (n outputs follow), ``{"items": [...]}``
    (null for each input with an output, in order, an error for each without) or
    ``{"error": {...}}`` (the whole group failed)."""

    TYPE = 9
    PAYLOAD = "outputs"
    batch: int
    model: str
    replica: int
    pid: int
    outcomes: list[dict[str, Any]]
    outputs: list[bytes] = field(default_factory=list)


@dataclass
class Stop(Message):
    """The replica is no longer wanted (scaled down or unloaded): it exits now."""

    TYPE = 10


@dataclass
class Configure(Message):
    """The supervisor changed a model: ``replicas`` wanted (0: unloaded); ``retry``: load
    again; ``failed``: slots given up on (replica index as a string -> why)."""

    TYPE = 11
    model: str
    replicas: int
    retry: bool = False
    failed: dict[str, Any] = field(default_factory=dict)


@dataclass
class Command(Message):
    """An operation for the supervisor: ``load``, ``unload`` or ``set_replicas``."""

    TYPE = 12
    id: int
    op: str
    model: str
    replicas: int | None = None


@dataclass
class Reply(Message):
    """The supervisor's answer to Command ``id``: ``error`` is CorralError.to_dict() data."""

    TYPE = 13
    id: int
    error: dict[str, Any] | None = None


_TYPES: dict[int, type[Message]] = {
    cls.TYPE: cls for cls in (Submit, Cancel, Result, Failure, Hello, Work, Done, Stop,
                              Configure, Command, Reply)
}


MAX_META = 64 * 1024

# Checks for the field types messages use; decode() refuses anything else.
_CHECKS: dict[str, Any] = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    and math.isfinite(v),
    "str": lambda v: isinstance(v, str),
    "str | None": lambda v: v is None or isinstance(v, str),
    "int | None": lambda v: v is None or _CHECKS["int"](v),
    "float | None": lambda v: v is None or (_CHECKS["float"](v) and v > 0),
    "bool": lambda v: isinstance(v, bool),
    "dict[str, Any] | None": lambda v: v is None or isinstance(v, dict),
    "list[Any]": lambda v: True,  # payload frames are bytes by construction
    "list[str]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "list[int]": lambda v: isinstance(v, list) and all(_CHECKS["int"](x) for x in v),
    "list[bytes]": lambda v: True,  # payload frames are bytes by construction
    "dict[str, Any]": lambda v: isinstance(v, dict),
    "list[dict[str, Any]]": lambda v: isinstance(v, list) and all(isinstance(x, dict)
                                                                  for x in v),
}


# Per message type, its fields (names of the JSON part; name and check of each field),
# worked out once: dataclasses.fields() builds a new tuple on every call.
_META_NAMES = {cls: tuple(f.name for f in fields(cls) if f.name != cls.PAYLOAD)
               for cls in _TYPES.values()}
_FIELD_CHECKS = {cls: tuple((f.name, f.type, _CHECKS[str(f.type)]) for f in fields(cls))
                 for cls in _TYPES.values()}


def encode(msg: Message) -> list[bytes]:
    """The frames of a message."""
    meta = {name: getattr(msg, name) for name in _META_NAMES[type(msg)]}
    frames = [MAGIC + bytes((VERSION, msg.TYPE)), json.dumps(meta).encode()]
    if msg.PAYLOAD:
        frames.extend(getattr(msg, msg.PAYLOAD))
    return frames


def decode(frames: list[bytes]) -> Message:
    """The message in these frames, or ProtocolError."""
    if len(frames) < 2 or len(frames[0]) != 4 or frames[0][:2] != MAGIC:
        raise ProtocolError("not a Corral message")
    if frames[0][2] != VERSION:
        raise ProtocolError(f"protocol version {frames[0][2]}, expected {VERSION}")
    cls = _TYPES.get(frames[0][3])
    if cls is None:
        raise ProtocolError(f"unknown message type {frames[0][3]}")
    if len(frames[1]) > MAX_META:
        raise ProtocolError(f"{cls.__name__} meta is larger than {MAX_META} bytes")
    try:
        meta = json.loads(frames[1])
        if not isinstance(meta, dict):
            raise ValueError("meta is not an object")
        if cls.PAYLOAD:
            meta[cls.PAYLOAD] = [bytes(f) for f in frames[2:]]
        msg = cls(**meta)
    except (ValueError, TypeError, RecursionError) as exc:
        raise ProtocolError(f"bad {cls.__name__} message: {exc}") from None
    for name, type_, check in _FIELD_CHECKS[cls]:
        if not check(getattr(msg, name)):
            raise ProtocolError(f"bad {cls.__name__} message: {name} is not {type_}")
    return msg
