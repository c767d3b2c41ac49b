"""What one hop costs: a request and its answer between two processes, no HTTP.

    python benchmarks/hop.py [--round-trips 20000] [--size 200]

Each transport: a server process answers every message with one of the same size; the
client sends one, waits for the answer, and so on (one in flight, as one HTTP worker
thread does). Prints wall time and CPU (user + system, both processes) per round trip.

- libzmq: DEALER -> ROUTER over ipc://, as Corral's HTTP workers talked to the
  dispatcher before (each side has libzmq's I/O thread between the application and the
  socket). Needs pyzmq (``pip install pyzmq``), which Corral no longer depends on;
  skipped without it.
- unix socket: a SOCK_STREAM socket with a 4-byte length prefix, read and written by
  the application thread itself, nothing else: the floor.
- corral: Corral's own transport (corral.transport.stream): the dispatcher's Hub on
  one side, a Link polled as an HTTP worker thread polls it on the other, framed
  protocol messages.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import resource
import socket
import struct
import tempfile
import select
import time
from typing import Any


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def zmq_server(address: str, n: int, result: mp.Queue) -> None:  # type: ignore[type-arg]
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(address)
    start = _cpu()
    for _ in range(n):
        ident, body = sock.recv_multipart()
        sock.send_multipart([ident, body])
    result.put(_cpu() - start)
    sock.close(linger=0)
    ctx.term()


def zmq_client(address: str, n: int, size: int) -> tuple[float, float]:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(address)
    body = b"x" * size
    sock.send(body)  # connected and warm
    sock.recv()
    start, cpu = time.perf_counter(), _cpu()
    for _ in range(n - 1):
        sock.send(body)
        sock.recv()
    out = time.perf_counter() - start, _cpu() - cpu
    sock.close(linger=0)
    ctx.term()
    return out


def unix_server(path: str, n: int, result: mp.Queue) -> None:  # type: ignore[type-arg]
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    conn, _ = listener.accept()
    start = _cpu()
    for _ in range(n):
        (length,) = struct.unpack("!I", _exact(conn, 4))
        body = _exact(conn, length)
        conn.sendall(struct.pack("!I", len(body)) + body)
    result.put(_cpu() - start)
    conn.close()


def _exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def unix_client(path: str, n: int, size: int) -> tuple[float, float]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    for _ in range(100):
        try:
            sock.connect(path)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            time.sleep(0.05)
    frame = struct.pack("!I", size) + b"x" * size
    sock.sendall(frame)
    _exact(sock, 4 + size)
    start, cpu = time.perf_counter(), _cpu()
    for _ in range(n - 1):
        sock.sendall(frame)
        _exact(sock, 4 + size)
    out = time.perf_counter() - start, _cpu() - cpu
    sock.close()
    return out


def corral_server(path: str, n: int, result: mp.Queue) -> None:  # type: ignore[type-arg]
    from corral.transport.stream import Hub

    hub = Hub()
    hub.listen(path, "f")
    start, answered = _cpu(), 0
    while answered < n:
        messages, _ = hub.poll(1.0)
        for peer, frames in messages:
            hub.send(peer, frames)
            answered += 1
    result.put(_cpu() - start)
    hub.close()


def corral_client(path: str, n: int, size: int) -> tuple[float, float]:
    from corral.transport.stream import Link

    link = Link(path)
    frames = [b"CR\x03\x04", b"x" * size]
    poll = select.poll()

    def trip() -> Any:
        link.send(frames, 2.0)
        if link.sock is not None and not getattr(trip, "registered", False):
            poll.register(link.sock, select.POLLIN)
            trip.registered = True  # type: ignore[attr-defined]
        while True:
            poll.poll(2000)
            got = link.receive()
            if got:
                return got

    for _ in range(100):  # until the server listens
        try:
            trip()
            break
        except Exception:
            time.sleep(0.05)
    start, cpu = time.perf_counter(), _cpu()
    for _ in range(n - 1):
        trip()
    out = time.perf_counter() - start, _cpu() - cpu
    link.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--round-trips", type=int, default=20000)
    p.add_argument("--size", type=int, default=200)
    args = p.parse_args()
    n = args.round_trips
    with tempfile.TemporaryDirectory() as tmp:
        have_zmq = importlib.util.find_spec("zmq") is not None
        if not have_zmq:
            print("| libzmq ipc | (pyzmq not installed: skipped) | |")
        for name, server, client, address in (
                *([("libzmq ipc", zmq_server, zmq_client, f"ipc://{tmp}/z")] if have_zmq else []),
                ("unix socket", unix_server, unix_client, f"{tmp}/u"),
                ("corral (Hub and Link)", corral_server, corral_client, f"{tmp}/c")):
            spawn = mp.get_context("spawn")
            result: mp.Queue = spawn.Queue()  # type: ignore[type-arg]
            proc = spawn.Process(target=server, args=(address, n, result))
            proc.start()
            time.sleep(0.3)
            wall, client_cpu = client(address, n, args.size)
            server_cpu = result.get(timeout=60)
            proc.join(10)
            trips = n - 1
            print(f"| {name} | {wall / trips * 1e6:.1f} | "
                  f"{(client_cpu + server_cpu) / trips * 1e6:.1f} |")


if __name__ == "__main__":
    print("| transport | µs per round trip | CPU µs per round trip (both processes) |")
    print("|---|---:|---:|")
    main()
