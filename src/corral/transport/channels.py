"""Channels: how an HTTP worker sends to a dispatcher and waits for the answer.

Two implementations, picked at run time after Gunicorn's worker has (or has not)
monkey-patched the process for gevent:

* :class:`ThreadChannel` (gthread workers): one DEALER socket per thread, used
  only by its own thread, as ZeroMQ requires. The thread sends, then polls its
  socket and the dispatcher's pidfd until its answer comes, the dispatcher dies, or
  time runs out. Answers to requests it gave up on are discarded by id.
* :class:`GreenChannel` (gevent workers): one ``zmq.green`` DEALER per process; a reader greenlet routes answers to waiting greenlets by id, and a
  watcher greenlet fails every waiting request at once if the dispatcher dies.

Sends never block: a full or unconnected socket raises :class:`SendFailed` at once.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from .protocol import Message, ProtocolError, decode

_HWM = 10_000


class SendFailed(Exception):
    """The dispatcher cannot take the message now (not running, or its queue to us is full)."""


class DispatcherGone(Exception):
    """The dispatcher process exited while a request waited for it."""


class ClientGone(Exception):
    """The HTTP client closed its connection while its request waited."""


def _client_closed(client: socket.socket) -> bool:
    """Whether a readable client socket is at end of file (not just sending more)."""
    try:
        return client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class DispatcherWatch:
    """The dispatcher's pid (from the supervisor's pid file) and a pidfd on it."""

    def __init__(self, pid_file: str) -> None:
        self._path = Path(pid_file)
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._fd: int | None = None
        self._stale = True

    def current(self) -> int | None:
        """The pidfd to poll for the dispatcher (no system call unless it changed).

        Old pidfds are never closed (another thread may be polling one); one fd per
        dispatcher restart is the price.
        """
        if self._stale:
            with self._lock:
                try:
                    pid = int(self._path.read_text())
                except (OSError, ValueError):
                    return self._fd
                if pid != self._pid:
                    self._pid = pid
                    try:
                        self._fd = os.pidfd_open(pid)
                    except OSError:
                        self._fd = None
                    self._stale = False
        return self._fd

    def exited(self, fd: int) -> None:
        """A waiter saw ``fd`` report the exit: look for the new dispatcher from now on."""
        if fd == self._fd:
            self._stale = True


# How long a send may wait for the dispatcher to be connected or to drain (bounded).
_SEND_WAIT = 2.0
# Retry in short slices: under gevent, libzmq's edge-triggered descriptor can miss the
# moment a socket becomes writable (zmq.green itself only rechecks every 1.33 s).
_SEND_SLICE_MS = 50


def _send(sock: Any, frames: list[bytes]) -> None:
    deadline = time.monotonic() + _SEND_WAIT
    while True:
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
            return
        except zmq.Again:
            pass
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SendFailed()
        sock.poll(max(1, min(_SEND_SLICE_MS, int(remaining * 1000))), zmq.POLLOUT)


def _dealer(ctx: Any, address: str) -> Any:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, _HWM)
    sock.setsockopt(zmq.RCVHWM, _HWM)
    # Without a connected peer a DEALER would queue forever: fail the send instead.
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.connect(address)
    return sock


class ThreadChannel:
    """One thread's socket to one dispatcher.

    A thread may have several requests in flight (a job runner keeps two slices going);
    answers come in whatever order their batches finish, so an answer to another open
    request is kept until its own wait asks for it.
    """

    def __init__(self, ctx: zmq.Context[Any], address: str, watch: DispatcherWatch) -> None:
        self.sock = _dealer(ctx, address)
        self.watch = watch
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self._pidfd: int | None = None
        self._open: set[int] = set()  # sent, not yet answered or given up
        self._early: dict[int, Message | DispatcherGone] = {}

    def send(self, frames: list[bytes], rid: int) -> None:
        _send(self.sock, frames)
        self._open.add(rid)

    def forget(self, rid: int) -> None:
        """Nobody will wait for ``rid`` any more: drop its answer if it comes."""
        self._open.discard(rid)
        self._early.pop(rid, None)

    def notify(self, frames: list[bytes]) -> None:
        """Send a message that gets no answer."""
        _send(self.sock, frames)

    def wait(self, rid: int, timeout: float,
             client: socket.socket | None = None) -> Message | None:
        """The answer to request ``rid``, or None when ``timeout`` passes first.

        Raises DispatcherGone if the dispatcher exits, ClientGone if ``client`` closes.
        """
        early = self._early.pop(rid, None)
        if early is not None:
            self._open.discard(rid)
            if isinstance(early, DispatcherGone):
                raise early
            return early
        deadline = time.monotonic() + timeout
        poller = self.poller
        fd = self.watch.current()
        if fd != self._pidfd:  # the dispatcher was restarted: watch the new one
            if self._pidfd is not None:
                poller.unregister(self._pidfd)
            if fd is not None:
                poller.register(fd, zmq.POLLIN)
            self._pidfd = fd
        client_fd = client.fileno() if client is not None else -1
        if client_fd >= 0:
            poller.register(client_fd, zmq.POLLIN)
        try:
            return self._wait(rid, deadline, fd, client, client_fd)
        finally:
            if client_fd >= 0 and client_fd in poller:
                poller.unregister(client_fd)

    def _wait(self, rid: int, deadline: float, fd: int | None, client: socket.socket | None,
              client_fd: int) -> Message | None:
        poller = self.poller
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            events = dict(poller.poll(max(1, int(remaining * 1000))))
            if self.sock in events:
                while True:
                    try:
                        frames = self.sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        msg = decode(frames)
                    except ProtocolError:
                        continue
                    got = getattr(msg, "id", None)
                    if got == rid:
                        self._open.discard(rid)
                        return msg
                    if got in self._open:
                        self._early[got] = msg
            elif fd is not None and fd in events:
                self.watch.exited(fd)
                for other in self._open - {rid}:  # their answers will never come either
                    self._early[other] = DispatcherGone()
                self._open.clear()
                raise DispatcherGone()
            elif client_fd >= 0 and client_fd in events:
                assert client is not None
                if _client_closed(client):
                    raise ClientGone()
                poller.unregister(client_fd)  # the next pipelined request: stop watching


class GreenChannel:
    """One gevent worker's socket to one dispatcher, shared by its greenlets."""

    def __init__(self, ctx: Any, address: str, watch: DispatcherWatch) -> None:
        import gevent
        from gevent.event import AsyncResult

        self._AsyncResult = AsyncResult
        self.sock = _dealer(ctx, address)
        self.watch = watch
        self.pending: dict[int, Any] = {}
        gevent.spawn(self._read)
        gevent.spawn(self._watch)

    def send(self, frames: list[bytes], rid: int) -> None:
        self.pending[rid] = self._AsyncResult()
        try:
            _send(self.sock, frames)
        except SendFailed:
            self.pending.pop(rid, None)
            raise

    def notify(self, frames: list[bytes]) -> None:
        """Send a message that gets no answer (nothing is left waiting for one)."""
        _send(self.sock, frames)

    def forget(self, rid: int) -> None:
        """Nobody will wait for ``rid`` any more."""
        self.pending.pop(rid, None)

    def wait(self, rid: int, timeout: float,
             client: socket.socket | None = None) -> Message | None:
        # Watching each client would cost a greenlet per request: ``client`` is unused.
        waiter = self.pending.get(rid)
        if waiter is None:
            return None
        from gevent import Timeout

        try:
            result = waiter.get(timeout=max(0.0, timeout))
        except Timeout:  # a BaseException: it must not escape as a server error
            return None
        finally:
            self.pending.pop(rid, None)
        if isinstance(result, DispatcherGone):
            raise result
        return result  # type: ignore[no-any-return]

    def _read(self) -> None:
        while True:
            try:
                msg = decode(self.sock.recv_multipart())
            except ProtocolError:
                continue
            except zmq.ContextTerminated:
                return
            except zmq.ZMQError:  # the worker is exiting: its context was destroyed
                if self.sock.closed:
                    return
                raise
            waiter = self.pending.get(getattr(msg, "id", -1))
            if waiter is not None:
                waiter.set(msg)

    def _watch(self) -> None:
        import gevent
        from gevent.socket import wait_read

        while True:
            fd = self.watch.current()
            if fd is None:
                gevent.sleep(0.5)
                continue
            wait_read(fd)
            self.watch.exited(fd)
            for waiter in list(self.pending.values()):
                waiter.set(DispatcherGone())
            gevent.sleep(0.2)  # give the supervisor time to write the new pid
