"""DispatcherEngine: the engine of HTTP workers under ``corral serve``.

Each request goes to its model's dispatcher process (see :mod:`.dispatcher`) over
ZeroMQ; the HTTP worker never loads a model. The ZeroMQ context is created on first
use, after Gunicorn forked the worker, and it is ``zmq.green``'s when gevent has
patched the process.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
from typing import Any

from pydantic import BaseModel

from ..engine import Engine, Handle, ModelStatus
from ..errors import ClientClosedRequest, ModelLoading, ModelNotFound, RequestTimeout, WorkerCrashed, error_from_dict
from ..registry.spec import ModelKey
from ..transport.channels import (
    ClientGone,
    DispatcherGone,
    DispatcherWatch,
    GreenChannel,
    SendFailed,
    ThreadChannel,
)
from ..transport.protocol import Cancel, Failure, Result, StatusQuery, StatusReply, Submit, encode
from .green import gevent_patched
from .plan import ModelEndpoints, Plan

Channel = ThreadChannel | GreenChannel
_STATUS_TIMEOUT = 2.0


class _RemoteHandle(Handle):
    def __init__(self, channel: Channel, key: ModelKey, rid: int) -> None:
        self.channel, self.key, self.rid = channel, key, rid

    def result(self, timeout: float, client: socket.socket | None = None) -> list[bytes]:
        try:
            msg = self.channel.wait(self.rid, timeout, client)
        except ClientGone:
            raise ClientClosedRequest(f"The client of a request to {self.key} went away.") from None
        except DispatcherGone:
            raise WorkerCrashed(
                f"The dispatcher of model {self.key} exited while this request waited; "
                "it is being restarted."
            ) from None
        if msg is None:
            raise RequestTimeout(f"Model {self.key} gave no result in time.")
        if isinstance(msg, Failure):
            raise error_from_dict(msg.error)
        if not isinstance(msg, Result):
            raise WorkerCrashed(f"The dispatcher of model {self.key} answered out of protocol.")
        return msg.outputs

    def cancel(self) -> None:
        try:
            self.channel.notify(encode(Cancel(id=self.rid)))
        except SendFailed:
            pass


class DispatcherEngine(Engine):
    """Sends each model's requests to its dispatcher process."""

    def __init__(self, plan: Plan) -> None:
        self._endpoints = {m.key: m for m in plan.models}
        self._watches = {m.key: DispatcherWatch(m.pid_file) for m in plan.models}
        self._ids = itertools.count(1)
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._ctx: Any = None
        self._green = False
        self._local = threading.local()
        self._shared: dict[ModelKey, GreenChannel] = {}

    def start(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._green = gevent_patched()
            if self._green:
                import zmq.green

                self._ctx = zmq.green.Context()
            else:
                import zmq

                self._ctx = zmq.Context()
            self._local = threading.local()
            self._shared = {}
            self._pid = os.getpid()

    def stop(self) -> None:
        if self._ctx is not None and self._pid == os.getpid():
            self._ctx.destroy(linger=0)
            self._ctx = None
            self._pid = None

    def _channel(self, key: ModelKey) -> Channel:
        self.start()
        endpoints: ModelEndpoints | None = self._endpoints.get(key)
        if endpoints is None:
            raise ModelNotFound(f"No model {key} in this engine.")
        if self._green:
            channel = self._shared.get(key)
            if channel is None:
                channel = self._shared[key] = GreenChannel(self._ctx, endpoints.frontend,
                                                           self._watches[key])
            return channel
        channels: dict[ModelKey, ThreadChannel] = self._local.__dict__.setdefault("channels", {})
        thread_channel = channels.get(key)
        if thread_channel is None:
            thread_channel = channels[key] = ThreadChannel(self._ctx, endpoints.frontend,
                                                           self._watches[key])
        return thread_channel

    def submit(self, key: ModelKey, inputs: list[BaseModel], deadline: float) -> Handle:
        channel = self._channel(key)
        rid = next(self._ids)
        frames = encode(Submit(id=rid, deadline=deadline,
                               # by alias, without computed fields: valid input again
                               inputs=[i.model_dump_json(by_alias=True, round_trip=True).encode()
                                       for i in inputs]))
        try:
            channel.send(frames, rid)
        except SendFailed:
            raise ModelLoading(f"The dispatcher of model {key} is not reachable now; retry "
                               "shortly.", retry_after=1) from None
        return _RemoteHandle(channel, key, rid)

    def status(self, key: ModelKey) -> ModelStatus:
        channel = self._channel(key)
        rid = next(self._ids)
        try:
            channel.send(encode(StatusQuery(id=rid)), rid)
            reply = channel.wait(rid, _STATUS_TIMEOUT)
        except (SendFailed, DispatcherGone):
            reply = None
        if not isinstance(reply, StatusReply) or reply.state not in ("loading", "ready", "failed"):
            return ModelStatus("loading", 0, "The model's dispatcher is not answering.")
        return ModelStatus(reply.state, reply.replicas_ready, reply.error)  # type: ignore[arg-type]
