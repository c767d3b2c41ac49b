"""Messages over Unix stream sockets: how Corral's processes talk to each other.

Every hop (HTTP worker -> dispatcher, replica -> dispatcher, anyone -> supervisor)
is a ``SOCK_STREAM`` Unix socket in the instance's runtime directory. A message is
the list of frames :func:`corral.transport.protocol.encode` gives, written as::

    u32 length of what follows
    u32 number of frames n
    n x u32 size of each frame
    the frames' bytes, one after the other

(all big-endian). The application thread reads and writes its own socket: no I/O
thread in between, one system call to send a message and usually one to receive
what is waiting (see docs/decisions.md, "Unix sockets instead of libzmq").

Two sides:

* :class:`Link`, a client's connection to one listening path, connected on first
  use and again after the peer went away (a restarted dispatcher).
* :class:`Hub`, a server's event loop: listening sockets, the connections accepted
  on them (each a peer ``(side, number)``, numbers never reused), buffered
  non-blocking writes, and other descriptors to watch (pidfds, a wake-up pipe).
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import select
import socket
import struct
import time
from collections.abc import Hashable

from .protocol import ProtocolError

logger = logging.getLogger(__name__)

_U32 = struct.Struct("!I")
_TWO = struct.Struct("!II")
# Larger than any message Corral sends (request bodies are capped far below); a length
# beyond it means the stream is corrupt.
MAX_MESSAGE = 1 << 30
MAX_FRAMES = 1 << 20
# What one recv asks for: not more, since CPython allocates that much first, and past
# glibc's mmap threshold (128 KiB) every recv would map and unmap it (16 µs against 3).
RECV_SIZE = 1 << 16
# What a Hub reads from one connection in one pass at most: a large message comes in
# whole (a socket holds far less), and the other connections still get their turn.
_READ_PASS = 64
# A peer that does not read: what a Hub keeps for it before dropping messages.
MAX_PENDING = 64 << 20
# A closed peer is an error on send (EPIPE), never a SIGPIPE, whatever the app set.
_SEND_FLAGS = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL

Peer = tuple[str, int]


class SendFailed(Exception):
    """The peer cannot take the message now (not listening, or not reading)."""


def pack(frames: list[bytes]) -> bytes:
    """One message, ready to write."""
    count = len(frames)
    sizes = [len(f) for f in frames]
    head = struct.pack(f"!II{count}I", 4 + 4 * count + sum(sizes), count, *sizes)
    return b"".join((head, *frames))


class Framer:
    """Cuts a byte stream into messages (lists of frames)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []  # the start of an incomplete message
        self._have = 0
        self._need = 0  # bytes that complete it (or its header)

    def feed(self, data: bytes) -> list[list[bytes]]:
        """The messages ``data`` completes; ProtocolError if the stream is not framed."""
        if self._parts:
            self._parts.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []  # a large message still coming: no copying until it is whole
            buf = b"".join(self._parts)
        else:
            buf = data
        out: list[list[bytes]] = []
        pos, end, need = 0, len(buf), 8
        while end - pos >= 8:
            length, count = _TWO.unpack_from(buf, pos)
            if length > MAX_MESSAGE or count > MAX_FRAMES or length < 4 + 4 * count:
                raise ProtocolError("not a framed Corral stream")
            stop = pos + 4 + length
            if stop > end:
                need = stop - pos
                break
            sizes = struct.unpack_from(f"!{count}I", buf, pos + 8)
            at = pos + 8 + 4 * count
            frames = []
            for size in sizes:
                frames.append(buf[at:at + size])
                at += size
            if at != stop:
                raise ProtocolError("frame sizes do not add up to the message length")
            out.append(frames)
            pos = stop
        rest = buf[pos:] if pos < end else b""
        self._parts = [rest] if rest else []
        self._have, self._need = len(rest), need
        return out


class Link:
    """A client's connection to the socket at ``path``.

    ``send`` connects when there is no connection (or the peer closed it since) and
    raises SendFailed when nothing listens, or the peer does not take the message
    within the timeout. ``receive`` returns None when the peer closed the connection:
    the next ``send`` connects again. One thread (or greenlet) sends at a time.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock: socket.socket | None = None
        self._framer = Framer()

    def connect(self, timeout: float = 2.0) -> socket.socket:
        if self.sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            # Not blocking while connecting: a full backlog (a stopped server) refuses at
            # once instead of blocking until the server accepts.
            sock.settimeout(timeout)
            try:
                sock.connect(self.path)
            except OSError:
                sock.close()
                raise SendFailed() from None
            sock.settimeout(None)
            self.sock, self._framer = sock, Framer()
        return self.sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, frames: list[bytes], timeout: float) -> None:
        data = pack(frames)
        for attempt in (1, 2):
            sock = self.connect(timeout)
            try:
                self._write(sock, data, time.monotonic() + timeout)
                return
            except (BrokenPipeError, ConnectionResetError):
                self.close()  # the peer went away: a new one may listen at the path now
                if attempt == 2:
                    raise SendFailed() from None
            except TimeoutError:  # the peer did not make room in time
                raise SendFailed() from None
            except OSError:
                self.close()
                raise SendFailed() from None

    def _write(self, sock: socket.socket, data: bytes, deadline: float) -> None:
        """All of ``data``: at once when the socket has room (one system call), else as
        room comes, until ``deadline`` (TimeoutError). Under gevent the socket waits for
        room itself, and the caller bounds the time. The socket's own timeout is never
        touched: a gevent reader of the same socket would inherit it."""
        view = memoryview(data)
        sent, total = 0, len(data)
        try:
            while sent < total:
                try:
                    n = sock.send(view[sent:], _SEND_FLAGS)
                except BlockingIOError:
                    n = 0
                sent += n
                if n == 0 and not _ready(sock, select.POLLOUT, deadline - time.monotonic()):
                    raise TimeoutError()
        except BaseException:  # a timeout, an error, or gevent.Timeout from the caller
            if 0 < sent < total:
                self.close()  # half a message went: the rest of the stream would be garbage
            raise

    def receive(self, timeout: float = 0.0) -> list[list[bytes]] | None:
        """The messages that have arrived whole, waiting up to ``timeout`` seconds for
        something to read ([] if nothing came, or only part of a message); None when the
        peer closed the connection."""
        sock = self.sock
        if sock is None:
            return None
        if timeout > 0 and not _ready(sock, select.POLLIN, timeout):
            return []
        try:
            data = sock.recv(RECV_SIZE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return []
        except OSError:
            data = b""
        if not data:
            self.close()
            return None
        try:
            return self._framer.feed(data)
        except ProtocolError:
            logger.warning("connection to %s sent an unframed stream; closed", self.path)
            self.close()
            return None


def _ready(sock: socket.socket, event: int, timeout: float) -> bool:
    """Whether ``sock`` becomes ready for ``event`` (POLLIN, POLLOUT) within ``timeout``."""
    if timeout <= 0:
        return False
    poll = select.poll()  # gevent's own poll where gevent has patched select
    poll.register(sock, event)
    return bool(poll.poll(max(1, int(timeout * 1000))))


class _Conn:
    __slots__ = ("peer", "sock", "fd", "framer", "out")

    def __init__(self, peer: Peer, sock: socket.socket) -> None:
        self.peer, self.sock, self.fd = peer, sock, sock.fileno()
        self.framer = Framer()
        self.out = bytearray()


class Hub:
    """A server's sockets and the connections accepted on them, polled together."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._listeners: dict[int, tuple[str, socket.socket]] = {}
        self._conns: dict[int, _Conn] = {}  # by descriptor
        self._peers: dict[Peer, _Conn] = {}
        self._numbers = itertools.count(1)

    def listen(self, path: str, side: str) -> None:
        """Accept connections at ``path``; their peers are ``(side, n)``."""
        try:
            os.unlink(path)  # left by a process that was killed
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        sock.listen(1024)
        sock.setblocking(False)
        self._listeners[sock.fileno()] = (side, sock)
        self._epoll.register(sock.fileno(), select.EPOLLIN)

    def watch(self, fd: int) -> None:
        """Report ``fd`` from :meth:`poll` when it is readable."""
        self._epoll.register(fd, select.EPOLLIN)

    def unwatch(self, fd: int) -> None:
        self._epoll.unregister(fd)

    def poll(self, timeout: float | None) -> tuple[list[tuple[Peer, list[bytes]]], list[int]]:
        """Wait up to ``timeout`` seconds (None: without end). Returns the messages that
        arrived, by peer, and the watched descriptors that became readable."""
        messages: list[tuple[Peer, list[bytes]]] = []
        watched: list[int] = []
        try:
            events = self._epoll.poll(-1 if timeout is None else timeout)
        except InterruptedError:
            return messages, watched
        for fd, event in events:
            conn = self._conns.get(fd)
            if conn is not None:
                if event & select.EPOLLOUT:
                    self._flush(conn)
                if event & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                    self._read(conn, messages)
            elif fd in self._listeners:
                self._accept(*self._listeners[fd])
            else:
                watched.append(fd)
        return messages, watched

    def send(self, peer: Hashable, frames: list[bytes]) -> bool:
        """Queue a message for ``peer``; False if it is gone or has too much unread."""
        conn = self._peers.get(peer)  # type: ignore[call-overload]
        if conn is None:
            return False
        data = pack(frames)
        if conn.out:
            if len(conn.out) + len(data) > MAX_PENDING:
                return False
            conn.out += data
            return True
        try:
            sent = conn.sock.send(data, _SEND_FLAGS)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._close(conn)
            return False
        if sent < len(data):
            conn.out += memoryview(data)[sent:]
            self._epoll.modify(conn.fd, select.EPOLLIN | select.EPOLLOUT)
        return True

    def close(self) -> None:
        for conn in list(self._conns.values()):
            self._close(conn)
        for _, sock in self._listeners.values():
            sock.close()
        self._listeners.clear()
        self._epoll.close()

    def _accept(self, side: str, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # out of descriptors: try again on the next event
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    logger.warning("cannot accept a connection: %s", exc)
                    time.sleep(0.01)
                return
            sock.setblocking(False)
            conn = _Conn((side, next(self._numbers)), sock)
            self._conns[conn.fd] = conn
            self._peers[conn.peer] = conn
            self._epoll.register(conn.fd, select.EPOLLIN)

    def _read(self, conn: _Conn, messages: list[tuple[Peer, list[bytes]]]) -> None:
        for _ in range(_READ_PASS):
            try:
                data = conn.sock.recv(RECV_SIZE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._close(conn)
                return
            try:
                for frames in conn.framer.feed(data):
                    messages.append((conn.peer, frames))
            except ProtocolError:
                logger.warning("a connection sent an unframed stream; closed")
                self._close(conn)
                return
            if len(data) < RECV_SIZE:
                return  # what was there is read: no recv only to hear "nothing more"

    def _flush(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out, _SEND_FLAGS)
        except BlockingIOError:
            return
        except OSError:
            self._close(conn)
            return
        del conn.out[:sent]
        if not conn.out:
            self._epoll.modify(conn.fd, select.EPOLLIN)

    def _close(self, conn: _Conn) -> None:
        if self._conns.pop(conn.fd, None) is None:
            return
        del self._peers[conn.peer]
        try:
            self._epoll.unregister(conn.fd)
        except (OSError, ValueError):
            pass
        conn.sock.close()
