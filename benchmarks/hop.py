"""What one hop costs: a request and its answer between two processes, libzmq against a
plain Unix socket, no HTTP and no Corral code.

    python benchmarks/hop.py [--round-trips 20000] [--size 200]

Each transport: a server process answers every message with one of the same size; the
client sends one, waits for the answer, and so on (one in flight, as one HTTP worker
thread does). Prints wall time and CPU (user + system, both processes) per round trip.
libzmq: DEALER -> ROUTER over ipc://, as HTTP workers talk to the dispatcher (each side
has libzmq's I/O thread between the application and the socket). Unix: a SOCK_STREAM
socket with a 4-byte length prefix, read and written by the application thread itself.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import socket
import struct
import tempfile
import time

import zmq


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def zmq_server(address: str, n: int, result: mp.Queue) -> None:  # type: ignore[type-arg]
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--round-trips", type=int, default=20000)
    p.add_argument("--size", type=int, default=200)
    args = p.parse_args()
    n = args.round_trips
    with tempfile.TemporaryDirectory() as tmp:
        for name, server, client, address in (
                ("libzmq ipc", zmq_server, zmq_client, f"ipc://{tmp}/z"),
                ("unix socket", unix_server, unix_client, f"{tmp}/u")):
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
