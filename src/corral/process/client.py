"""DispatcherEngine: the engine of HTTP workers in process mode.

Each request goes to the instance's dispatcher process (see :mod:`.dispatcher`)
over its Unix socket; the HTTP worker never loads a model. Model states come from the
runtime directory's status.json, which the dispatcher rewrites whenever a state
changes, so /v1/models and /readyz never wait on another process. Load, unload
and replica counts go to the supervisor's control socket.

Connections are made on first use, after Gunicorn forked the worker: one per thread
under gthread, one per process (read by a greenlet) when gevent has patched it.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
import weakref

from ..batching.queue import Lane
from ..engine import Engine, Handle, Input, ModelStatus, Outputs, outputs_of
from ..errors import (
    ClientClosedRequest,
    CorralError,
    Overloaded,
    RequestTimeout,
    WorkerCrashed,
    error_from_dict,
)
from ..green import gevent_patched
from ..registry.spec import ModelKey
from ..transport.channels import (
    ClientGone,
    DispatcherGone,
    GreenChannel,
    SendFailed,
    ThreadChannel,
)
from ..transport.protocol import (
    Cancel,
    Command,
    Failure,
    ProtocolError,
    Reply,
    Result,
    Submit,
    decode,
    encode,
)
from ..transport.stream import Link
from .runtime import Runtime

Channel = ThreadChannel | GreenChannel
_CONTROL_TIMEOUT = 10.0


class _RemoteHandle(Handle):
    def __init__(self, channel: Channel, key: ModelKey, rid: int) -> None:
        self.channel, self.key, self.rid = channel, key, rid

    def result(self, timeout: float, client: socket.socket | None = None) -> Outputs:
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
            self.channel.forget(self.rid)
            raise RequestTimeout(f"Model {self.key} gave no result in time.")
        if isinstance(msg, Failure):
            raise error_from_dict(msg.error)
        if not isinstance(msg, Result):
            raise WorkerCrashed(f"The dispatcher of model {self.key} answered out of protocol.")
        self.batch = msg.batch
        return outputs_of(msg)

    def cancel(self) -> None:
        self.channel.forget(self.rid)
        try:
            self.channel.notify(encode(Cancel(id=self.rid)))
        except SendFailed:
            pass


class DispatcherEngine(Engine):
    """Sends requests to the dispatcher process of a runtime directory."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._ids = itertools.count(1)
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._green = False
        self._local = threading.local()
        self._shared: GreenChannel | None = None
        # Every thread's, to close on stop(); a thread's own closes when the thread ends
        # (a job runner's threads come and go).
        self._channels: weakref.WeakSet[ThreadChannel] = weakref.WeakSet()
        self._status: dict[str, ModelStatus] = {}
        self._status_version: tuple[int, int] | None = None

    def start(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._green = gevent_patched()
            self._local = threading.local()  # connections made before a fork are not ours
            self._shared = None
            self._channels = weakref.WeakSet()
            self._pid = os.getpid()

    def stop(self) -> None:
        if self._pid == os.getpid():
            with self._lock:
                channels: list[Channel] = list(self._channels)
                if self._shared is not None:
                    channels.append(self._shared)
                for channel in channels:
                    channel.link.close()
                self._channels, self._shared = weakref.WeakSet(), None
                self._local = threading.local()
                self._pid = None

    def _channel(self) -> Channel:
        self.start()
        if self._green:
            if self._shared is None:
                self._shared = GreenChannel(self._runtime.frontend)
            return self._shared
        channel: ThreadChannel | None = getattr(self._local, "channel", None)
        if channel is None:
            channel = self._local.channel = ThreadChannel(self._runtime.frontend)
            weakref.finalize(channel, channel.link.close)
            with self._lock:
                self._channels.add(channel)
        return channel

    def submit(self, key: ModelKey, inputs: list[Input], deadline: float,
               lane: Lane = "live", request_id: str = "", size: float | None = None) -> Handle:
        channel = self._channel()
        rid = next(self._ids)
        frames = encode(Submit(id=rid, model=str(key), deadline=deadline, lane=lane,
                               request_id=request_id, size=size,
                               inputs=[i.json for i in inputs]))
        try:
            channel.send(frames, rid)
        except SendFailed:
            raise self._unreachable(key) from None
        return _RemoteHandle(channel, key, rid)

    def _unreachable(self, key: ModelKey) -> CorralError:
        """Why a request could not reach the dispatcher, from the state last reported."""
        return self.status(key).refusal(key) or Overloaded(
            f"The dispatcher of model {key} is not taking requests now (restarting, or "
            "saturated); retry shortly.", retry_after=1)

    def status(self, key: ModelKey) -> ModelStatus:
        """From status.json, re-read only when the dispatcher rewrote it (one stat)."""
        try:
            st = os.stat(self._runtime.status_file)
            version = (st.st_mtime_ns, st.st_ino)  # each write is a new file (a new inode)
            if version != self._status_version:
                self._status = self._runtime.read_status()
                self._status_version = version
        except (OSError, ValueError, KeyError, TypeError):
            pass  # not written yet, or the instance is stopping: keep what we had
        status = self._status.get(str(key))
        if status is None:
            try:
                wanted = next((m.replicas for m in self._runtime.read_models()
                               if m.key == str(key)), 0)
            except (OSError, ValueError):
                wanted = 0
            return ModelStatus("loading", 0, wanted, "The dispatcher has not reported yet.")
        return status

    # -- control ----------------------------------------------------------------------

    def set_replicas(self, key: ModelKey, replicas: int) -> None:
        self._command(Command(id=next(self._ids), op="set_replicas", model=str(key),
                              replicas=replicas))

    def load(self, key: ModelKey) -> None:
        self._command(Command(id=next(self._ids), op="load", model=str(key)))

    def unload(self, key: ModelKey) -> None:
        self._command(Command(id=next(self._ids), op="unload", model=str(key)))

    def _command(self, command: Command) -> None:
        """Send a command to the supervisor and wait for its reply; raise what it says."""
        deadline = time.monotonic() + _CONTROL_TIMEOUT
        with Link(self._runtime.control) as link:
            try:
                link.send(encode(command), _CONTROL_TIMEOUT)
            except SendFailed:
                raise Overloaded("The supervisor is not taking commands now; retry.",
                                 retry_after=1) from None
            while (remaining := deadline - time.monotonic()) > 0:
                received = link.receive(remaining)
                if received is None:
                    break  # the supervisor closed the connection
                for frames in received:
                    try:
                        reply = decode(frames)
                    except ProtocolError:
                        continue
                    if isinstance(reply, Reply) and reply.id == command.id:
                        if reply.error is not None:
                            raise error_from_dict(reply.error)
                        return
        raise Overloaded("The supervisor did not answer the command in time; retry.",
                         retry_after=1)
