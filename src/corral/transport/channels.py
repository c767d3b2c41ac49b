"""Channels: how an HTTP worker sends to a dispatcher and waits for the answer.

Two implementations, picked at run time after Gunicorn's worker has (or has not)
monkey-patched the process for gevent, both over a :class:`~.stream.Link` to the
dispatcher's socket:

* :class:`ThreadChannel` (gthread workers): one connection per thread, used only by
  its own thread. The thread sends, then polls its connection (and its HTTP client's
  socket) until its answer comes, the connection closes (the dispatcher exited), or
  time runs out. Answers to requests it gave up on are discarded by id.
* :class:`GreenChannel` (gevent workers): one connection per process; a reader
  greenlet routes answers to waiting greenlets by id, and fails every request sent
  on the connection at once if it closes.

The end of the connection is how a waiting request learns that the dispatcher died:
its process's exit closes every connection it accepted. A send never waits long: no
dispatcher listening, or one that does not read within two seconds, raises
:class:`SendFailed` (the HTTP worker answers 503).
"""

from __future__ import annotations

import select
import socket
import time
from typing import Any

from .protocol import Message, ProtocolError, decode
from .stream import RECV_SIZE, Framer, Link, SendFailed

__all__ = ["ClientGone", "DispatcherGone", "GreenChannel", "SendFailed", "ThreadChannel"]


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


# How long a send may wait for the dispatcher to take a message (bounded).
_SEND_WAIT = 2.0


class ThreadChannel:
    """One thread's connection to one dispatcher.

    A thread may have several requests in flight (a job runner keeps two slices going);
    answers come in whatever order their batches finish, so an answer to another open
    request is kept until its own wait asks for it.
    """

    def __init__(self, path: str) -> None:
        self.link = Link(path)
        self._poll = select.poll()
        self._polled = -1  # the link's descriptor in the poll set
        self._open: set[int] = set()  # sent, not yet answered or given up
        self._early: dict[int, Message | DispatcherGone] = {}

    def send(self, frames: list[bytes], rid: int) -> None:
        before = self.link.sock
        self.link.send(frames, _SEND_WAIT)
        if self.link.sock is not before:  # a new connection: the old one's answers are lost
            self._lose_open()
        self._open.add(rid)

    def forget(self, rid: int) -> None:
        """Nobody will wait for ``rid`` any more: drop its answer if it comes."""
        self._open.discard(rid)
        self._early.pop(rid, None)

    def notify(self, frames: list[bytes]) -> None:
        """Send a message that gets no answer."""
        self.link.send(frames, _SEND_WAIT)

    def _lose_open(self) -> None:
        for other in self._open:
            self._early[other] = DispatcherGone()
        self._open.clear()

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
        sock = self.link.sock
        if sock is None or rid not in self._open:
            self._open.discard(rid)
            raise DispatcherGone()
        fd = sock.fileno()
        poll = self._poll
        if fd != self._polled:  # a new connection (a closed one's number may be reused)
            if self._polled >= 0:
                poll.unregister(self._polled)
            poll.register(fd, select.POLLIN)
            self._polled = fd
        client_fd = client.fileno() if client is not None else -1
        if client_fd >= 0:
            poll.register(client_fd, select.POLLIN)
        try:
            return self._wait(rid, time.monotonic() + timeout, fd, client, client_fd)
        finally:
            if client_fd >= 0:
                try:
                    poll.unregister(client_fd)
                except KeyError:
                    pass

    def _wait(self, rid: int, deadline: float, fd: int, client: socket.socket | None,
              client_fd: int) -> Message | None:
        poll = self._poll
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            events = poll.poll(max(1, int(remaining * 1000) + 1))
            for ready, _ in events:
                if ready == fd:
                    answer = self._receive(rid)
                    if answer is not None:
                        return answer
                elif ready == client_fd:
                    assert client is not None
                    if _client_closed(client):
                        raise ClientGone()
                    poll.unregister(client_fd)  # the next pipelined request: stop watching
                    client_fd = -1

    def _receive(self, rid: int) -> Message | None:
        """Take what arrived; the answer to ``rid`` if it is among it."""
        got = self.link.receive()
        if got is None:  # the dispatcher closed the connection: it exited
            self._poll.unregister(self._polled)
            self._polled = -1
            self._open.discard(rid)
            self._lose_open()
            raise DispatcherGone()
        answer: Message | None = None
        for frames in got:
            try:
                msg = decode(frames)
            except ProtocolError:
                continue
            answered = getattr(msg, "id", None)
            if answered == rid:
                self._open.discard(rid)
                answer = msg
            elif answered in self._open:
                self._open.discard(answered)  # answered: no longer lost if the link ends
                self._early[answered] = msg
        return answer


class GreenChannel:
    """One gevent worker's connection to one dispatcher, shared by its greenlets."""

    def __init__(self, path: str) -> None:
        from gevent.event import AsyncResult
        from gevent.lock import Semaphore

        self._AsyncResult = AsyncResult
        self.link = Link(path)
        self.pending: dict[int, Any] = {}
        self._sent_on: dict[int, socket.socket] = {}
        self._sending = Semaphore()

    def send(self, frames: list[bytes], rid: int) -> None:
        self.pending[rid] = self._AsyncResult()
        try:
            self._send(frames)
        except BaseException:
            self.pending.pop(rid, None)
            raise
        assert self.link.sock is not None
        self._sent_on[rid] = self.link.sock

    def notify(self, frames: list[bytes]) -> None:
        """Send a message that gets no answer (nothing is left waiting for one)."""
        self._send(frames)

    def _send(self, frames: list[bytes]) -> None:
        import gevent

        # Waiting for our turn counts too. A send cut short with half its message written
        # closes the connection (Link does); one that wrote nothing leaves it as it was.
        with gevent.Timeout(_SEND_WAIT, SendFailed), self._sending:
            before = self.link.sock
            self.link.send(frames, _SEND_WAIT)
            if self.link.sock is not before:
                gevent.spawn(self._read, self.link.sock)

    def forget(self, rid: int) -> None:
        """Nobody will wait for ``rid`` any more."""
        self.pending.pop(rid, None)
        self._sent_on.pop(rid, None)

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
            self.forget(rid)
        if isinstance(result, DispatcherGone):
            raise result
        return result  # type: ignore[no-any-return]

    def _read(self, sock: socket.socket) -> None:
        framer = Framer()
        while True:
            try:
                data = sock.recv(RECV_SIZE)
                messages = framer.feed(data) if data else None
            except (OSError, ProtocolError):  # closed under us, or not our protocol
                messages = None
            if messages is None:
                break
            for frames in messages:
                try:
                    msg = decode(frames)
                except ProtocolError:
                    continue
                waiter = self.pending.get(getattr(msg, "id", -1))
                if waiter is not None:
                    waiter.set(msg)
        if self.link.sock is sock:
            self.link.close()
        for rid, on in list(self._sent_on.items()):  # their answers will never come
            if on is sock and rid in self.pending:
                self.pending[rid].set(DispatcherGone())
