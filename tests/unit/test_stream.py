"""Messages over Unix stream sockets: framing, the server's hub, a client's link, and the
HTTP worker's thread channel, over real sockets in a temporary directory."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.transport.channels import DispatcherGone, ThreadChannel
from corral.transport.protocol import ProtocolError, Result, Submit, decode, encode
from corral.transport.stream import Framer, Hub, Link, SendFailed, pack

MESSAGES = [
    [b"CR\x03\x01", b'{"id": 1}', b"{}", b"[1, 2]"],
    [b"only"],
    [b"", b"", b"x"],
    [],
    [b"big", bytes(range(256)) * 4000],
]


def test_messages_cut_anywhere_come_out_whole() -> None:
    stream = b"".join(pack(m) for m in MESSAGES)
    for cut in range(1, 40):  # every split of the headers, then larger pieces
        framer = Framer()
        out = []
        for at in range(0, len(stream), cut if cut < 20 else cut * 997):
            out.extend(framer.feed(stream[at:at + (cut if cut < 20 else cut * 997)]))
        assert out == MESSAGES, cut


def test_random_chunks_and_several_messages_per_chunk() -> None:
    rng = random.Random(7)
    messages = [[rng.randbytes(rng.randrange(0, 300)) for _ in range(rng.randrange(0, 5))]
                for _ in range(500)]
    stream = b"".join(pack(m) for m in messages)
    framer, out, at = Framer(), [], 0
    while at < len(stream):
        step = rng.randrange(1, 5000)
        out.extend(framer.feed(stream[at:at + step]))
        at += step
    assert out == messages


@pytest.mark.parametrize("bad", [
    b"\x00\x00\x00\x08\x00\x00\x00\x02\x00\x00\x00\x00",  # two frames, room for one size
    b"\x7f\xff\xff\xff\x00\x00\x00\x00",  # longer than any message may be
    b"\x00\x00\x00\x09\x00\x00\x00\x01\x00\x00\x00\x09xxxxxxxxxxxxx",  # sizes past the end
    b"GET / HTTP/1.1\r\n\r\n",
])
def test_a_stream_that_is_not_framed_is_a_protocol_error(bad: bytes) -> None:
    with pytest.raises(ProtocolError):
        Framer().feed(bad)


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "s")


class Server:
    """A Hub in a thread that answers each message with ``answer(frames)``: a list of
    replies, each frames or ``(delay in seconds, frames)``. ``slow_for`` seconds from the
    start it reads only every 50 ms; with ``read`` false it never reads."""

    def __init__(self, path: str, answer: object = None, read: bool = True,
                 slow_for: float = 0.0) -> None:
        self.hub = Hub()
        self.hub.listen(path, "f")
        self.peers: list[tuple[str, int]] = []
        self.answer = answer if answer is not None else (lambda frames: [frames])
        self.read = read
        self.slow_until = time.monotonic() + slow_for
        self.later: list[tuple[float, tuple[str, int], list[bytes]]] = []
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping:
            if not self.read:
                time.sleep(0.01)
                continue
            if time.monotonic() < self.slow_until:
                time.sleep(0.05)
            messages, _ = self.hub.poll(0.01)
            now = time.monotonic()
            for peer, frames in messages:
                self.peers.append(peer)
                for reply in self.answer(frames):  # type: ignore[operator]
                    delay, reply = reply if isinstance(reply, tuple) else (0.0, reply)
                    self.later.append((now + delay, peer, reply))
            for item in [i for i in self.later if i[0] <= now]:
                self.later.remove(item)
                self.hub.send(item[1], item[2])

    def stop(self) -> None:
        self.stopping = True
        self.thread.join()
        self.hub.close()


@pytest.fixture
def echo(path: str) -> Iterator[Server]:
    server = Server(path)
    yield server
    server.stop()


def _receive(link: Link, count: int = 1, timeout: float = 5) -> list[list[bytes]]:
    out: list[list[bytes]] = []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        got = link.receive(0.1)
        assert got is not None, "the connection closed"
        out.extend(got)
    return out


def test_a_link_and_a_hub_carry_messages_both_ways(echo: Server, path: str) -> None:
    with Link(path) as link, Link(path) as other:
        for message in MESSAGES:
            link.send(message, 2.0)
        assert _receive(link, len(MESSAGES)) == MESSAGES
        other.send([b"second"], 2.0)
        assert _receive(other) == [[b"second"]]
    assert len(set(echo.peers)) == 2  # each connection its own peer


def test_a_link_to_nothing_listening_fails_at_once(path: str) -> None:
    started = time.monotonic()
    with pytest.raises(SendFailed), Link(path) as link:
        link.send([b"x"], 2.0)
    assert time.monotonic() - started < 1


def test_a_link_connects_again_to_a_restarted_server(path: str,
                                                     request: pytest.FixtureRequest) -> None:
    server = Server(path)
    link = Link(path)
    request.addfinalizer(link.close)
    link.send([b"one"], 2.0)
    assert _receive(link) == [[b"one"]]
    server.stop()
    assert link.receive(2.0) is None  # the server's end closed
    restarted = Server(path)
    try:
        link.send([b"two"], 2.0)
        assert _receive(link) == [[b"two"]]
    finally:
        restarted.stop()


def test_a_send_to_a_server_that_does_not_read_times_out(path: str,
                                                         request: pytest.FixtureRequest) -> None:
    server = Server(path, read=False)
    try:
        link = Link(path)
        request.addfinalizer(link.close)
        started = time.monotonic()
        with pytest.raises(SendFailed):
            for _ in range(1000):  # fills the socket's buffers, then waits
                link.send([b"x" * 65536], 0.3)
        assert time.monotonic() - started < 5
        assert link.sock is None  # part of a message may have gone: the stream is cut
    finally:
        server.stop()


def test_the_hub_queues_what_a_slow_reader_has_not_read_yet(path: str) -> None:
    big = [b"y" * (1 << 20)]
    server = Server(path, answer=lambda frames: [big] * 8)
    try:
        with Link(path) as link:
            link.send([b"go"], 2.0)
            time.sleep(0.3)  # the hub could write only part of 8 MiB: the rest waits for us
            assert _receive(link, 8) == [big] * 8
        assert not server.hub.send(("f", 10**9), [b"x"])  # no such peer
    finally:
        server.stop()


def test_the_hub_closes_a_connection_that_sends_garbage(echo: Server, path: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.sendall(b"\x7f\xff\xff\xff\x00\x00\x00\x00")
        sock.settimeout(5)
        assert sock.recv(10) == b""  # closed by the hub
    with Link(path) as link:  # others are still served
        link.send([b"fine"], 2.0)
        assert _receive(link) == [[b"fine"]]


# -- the HTTP worker's channel ---------------------------------------------------------

def _submit(rid: int) -> list[bytes]:
    return encode(Submit(id=rid, model="m:1", deadline=0.0, inputs=[b"{}"]))


def test_a_thread_channel_gets_each_answer_by_id_in_any_order(path: str, request: pytest.FixtureRequest) -> None:
    held: list[int] = []

    def answer(frames: list[bytes]) -> list[list[bytes]]:
        held.append(decode(frames).id)  # type: ignore[attr-defined]
        if len(held) < 3:
            return []
        return [encode(Result(id=rid, outputs=[str(rid).encode()])) for rid in reversed(held)]

    server = Server(path, answer=answer)
    try:
        channel = ThreadChannel(path)
        request.addfinalizer(channel.link.close)
        for rid in (1, 2, 3):
            channel.send(_submit(rid), rid)
        for rid in (1, 2, 3):  # answered 3, 2, 1: the others are kept until asked for
            msg = channel.wait(rid, 5.0)
            assert isinstance(msg, Result) and msg.outputs == [str(rid).encode()]
    finally:
        server.stop()


def test_a_thread_channel_times_out_and_drops_the_late_answer(path: str, request: pytest.FixtureRequest) -> None:
    server = Server(path, answer=lambda frames: [])
    try:
        channel = ThreadChannel(path)
        request.addfinalizer(channel.link.close)
        channel.send(_submit(1), 1)
        started = time.monotonic()
        assert channel.wait(1, 0.2) is None
        assert 0.15 < time.monotonic() - started < 2
    finally:
        server.stop()


def test_a_thread_channel_fails_its_waiters_when_the_dispatcher_goes(path: str, request: pytest.FixtureRequest) -> None:
    server = Server(path, answer=lambda frames: [])
    channel = ThreadChannel(path)
    request.addfinalizer(channel.link.close)
    channel.send(_submit(1), 1)
    channel.send(_submit(2), 2)
    time.sleep(0.2)
    threading.Timer(0.2, server.stop).start()
    started = time.monotonic()
    with pytest.raises(DispatcherGone):
        channel.wait(1, 10.0)
    assert time.monotonic() - started < 5  # not the 10 s timeout
    with pytest.raises(DispatcherGone):  # sent on the same connection: lost too
        channel.wait(2, 10.0)
    restarted = Server(path)
    try:
        channel.send(_submit(3), 3)  # a new connection
        msg = channel.wait(3, 5.0)
        assert msg is not None and getattr(msg, "id", None) == 3
    finally:
        restarted.stop()


def test_a_late_answer_is_dropped_and_the_next_one_still_found(
        path: str, request: pytest.FixtureRequest) -> None:
    def answer(frames: list[bytes]) -> list[object]:
        rid = decode(frames).id  # type: ignore[attr-defined]
        return [(0.4 if rid == 1 else 0.5,  # 1's answer comes after its wait gave up
                 encode(Result(id=rid, outputs=[str(rid).encode()])))]

    server = Server(path, answer=answer)
    request.addfinalizer(server.stop)
    channel = ThreadChannel(path)
    request.addfinalizer(channel.link.close)
    channel.send(_submit(1), 1)
    assert channel.wait(1, 0.1) is None
    channel.forget(1)
    channel.send(_submit(2), 2)  # its answer comes after request 1's, on the same socket
    msg = channel.wait(2, 5.0)
    assert isinstance(msg, Result) and msg.id == 2
    assert 1 not in channel._early  # 1's answer came first, and was dropped


def test_an_answer_that_came_early_survives_the_connection_closing(
        path: str, request: pytest.FixtureRequest) -> None:
    server = Server(path, answer=lambda frames: (
        [encode(Result(id=2, outputs=[b"two"]))] if decode(frames).id == 2 else []))  # type: ignore[attr-defined]
    channel = ThreadChannel(path)
    request.addfinalizer(channel.link.close)
    channel.send(_submit(1), 1)
    channel.send(_submit(2), 2)
    threading.Timer(0.5, server.stop).start()
    with pytest.raises(DispatcherGone):  # 2's answer arrives while 1 waits; then the end
        channel.wait(1, 10.0)
    msg = channel.wait(2, 1.0)
    assert isinstance(msg, Result) and msg.outputs == [b"two"]


def test_a_send_on_a_connection_the_server_closed_goes_to_the_new_server(
        path: str, request: pytest.FixtureRequest) -> None:
    """What an idle HTTP thread, a replica or the supervisor meets after a dispatcher
    restart: its connection is stale, the send fails on it, and is sent again on a new one."""
    server = Server(path)
    channel = ThreadChannel(path)
    request.addfinalizer(channel.link.close)
    channel.send(_submit(1), 1)
    assert channel.wait(1, 5.0) is not None
    server.stop()
    restarted = Server(path)
    request.addfinalizer(restarted.stop)
    time.sleep(0.1)
    channel.send(_submit(2), 2)  # no read in between: the old socket is only found dead now
    msg = channel.wait(2, 5.0)
    assert msg is not None and getattr(msg, "id", None) == 2
    assert len(restarted.peers) == 1


def test_a_large_message_reaches_a_hub_whole(path: str) -> None:
    big = [b"z" * (8 << 20)]
    got: list[list[bytes]] = []
    server = Server(path, answer=lambda frames: got.append(frames) or [])
    try:
        with Link(path) as link:
            started = time.monotonic()
            link.send(big, 5.0)
            while not got and time.monotonic() - started < 5:
                time.sleep(0.01)
        assert got == [big]
    finally:
        server.stop()


def test_a_replica_waits_for_a_whole_work_message_without_saying_hello(path: str) -> None:
    from corral.process import replica

    hub = Hub()
    hub.listen(path, "b")
    try:
        with Link(path) as link:
            link.send([b"hello"], 2.0)
            messages: list[tuple[tuple[str, int], list[bytes]]] = []
            while not messages:
                messages = hub.poll(1.0)[0]
            peer = messages[0][0]
            work = [b"w" * (5 << 20)]
            assert hub.send(peer, work)
            pumping = threading.Event()

            def pump() -> None:  # write what the socket could not take, as the loop does
                while not pumping.is_set():
                    messages.extend(hub.poll(0.01)[0])

            thread = threading.Thread(target=pump)
            thread.start()
            try:
                received = replica._receive(link)
            finally:
                pumping.set()
                thread.join()
            assert received == [work]
            assert len(messages) == 1  # nothing but the first hello: no heartbeat per chunk
    finally:
        hub.close()


GREEN_CLIENT = r'''
from gevent import monkey; monkey.patch_all()
import json, sys, time, gevent
from corral.transport.channels import GreenChannel, DispatcherGone
from corral.transport.protocol import encode, Submit, Result
channel = GreenChannel(sys.argv[1])
out = {}
def request(rid, size, timeout):
    channel.send(encode(Submit(id=rid, model="m:1", deadline=0.0, inputs=[b"x" * size])), rid)
    started = time.monotonic()
    try:
        msg = channel.wait(rid, timeout)
        out[rid] = [type(msg).__name__, msg.outputs[0].decode() if isinstance(msg, Result) else None]
    except DispatcherGone:
        out[rid] = ["DispatcherGone", None]
    out[rid].append(round(time.monotonic() - started, 2))
jobs = []
for rid, size, timeout in ((3, 10, 10.0), (2, 1_500_000, 10.0), (1, 10, 10.0), (4, 10, 4.0)):
    jobs.append(gevent.spawn(request, rid, size, timeout))
    gevent.sleep(0.05)
gevent.joinall(jobs)
print(json.dumps(out))
'''


def test_a_green_channel_routes_answers_and_outlives_a_slow_send(
        path: str, tmp_path: Path) -> None:
    """Under gevent (a real monkey-patched process): greenlets share one connection; a
    large send that must wait for a slow server to read, an answer arriving meanwhile,
    and a quiet spell longer than the send timeout after it fail nothing."""
    import json
    import subprocess
    import sys

    def answer(frames: list[bytes]) -> list[object]:
        rid = decode(frames).id  # type: ignore[attr-defined]
        if rid == 4:
            return []  # never answered: it times out at its own time, not before
        # 3's answer comes while the 3 MB request 2 is still being sent; 1's after a quiet
        # spell longer than the send timeout (2 s).
        delay = {3: 0.3, 2: 3.0, 1: 3.0}.get(rid, 0.0)
        return [(delay, encode(Result(id=rid, outputs=[f"r{rid}".encode()])))]

    server = Server(path, answer=answer, slow_for=6.0)  # the large send waits for room
    script = tmp_path / "green_client.py"
    script.write_text(GREEN_CLIENT)
    try:
        proc = subprocess.run([sys.executable, str(script), path], capture_output=True,
                              text=True, timeout=60)
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["1"][:2] == ["Result", "r1"]
    assert out["2"][:2] == ["Result", "r2"]
    assert out["3"][:2] == ["Result", "r3"]
    assert out["4"][0] == "NoneType" and out["4"][2] >= 3.8  # its own timeout


GREEN_GONE = r'''
from gevent import monkey; monkey.patch_all()
import json, sys, time, gevent
from corral.transport.channels import GreenChannel, DispatcherGone
from corral.transport.protocol import encode, Submit
channel = GreenChannel(sys.argv[1])
out = {}
def request(rid):
    channel.send(encode(Submit(id=rid, model="m:1", deadline=0.0, inputs=[b"{}"])), rid)
    started = time.monotonic()
    try:
        out[rid] = [type(channel.wait(rid, 20.0)).__name__]
    except DispatcherGone:
        out[rid] = ["DispatcherGone"]
    out[rid].append(round(time.monotonic() - started, 2))
gevent.joinall([gevent.spawn(request, rid) for rid in (1, 2, 3)])
print(json.dumps(out))
'''


def test_a_green_channel_fails_every_waiter_at_once_when_the_server_goes(
        path: str, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    server = Server(path, answer=lambda frames: [])
    threading.Timer(1.0, server.stop).start()
    script = tmp_path / "green_gone.py"
    script.write_text(GREEN_GONE)
    proc = subprocess.run([sys.executable, str(script), path], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [out[k][0] for k in ("1", "2", "3")] == ["DispatcherGone"] * 3
    assert max(out[k][1] for k in ("1", "2", "3")) < 5  # not their 20 s timeout


def test_a_thread_channel_closes_when_its_thread_ends(tmp_path: Path) -> None:
    """The jobs process starts a thread per job: each thread's connection to the
    dispatcher must end with the thread, not pile up until the engine stops."""
    import gc

    from corral.process.client import DispatcherEngine
    from corral.process.runtime import Runtime

    runtime = Runtime(tmp_path)
    hub = Hub()
    hub.listen(runtime.frontend, "f")
    engine = DispatcherEngine(runtime)
    try:
        def use() -> None:
            channel = engine._channel()
            assert isinstance(channel, ThreadChannel)
            channel.link.connect()

        threads = [threading.Thread(target=use) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not hub._peers:
            hub.poll(0.05)  # accept them
        gc.collect()
        while time.monotonic() < deadline and hub._peers:
            hub.poll(0.05)  # see each end
        assert not hub._peers
        assert not list(engine._channels)
    finally:
        engine.stop()
        hub.close()
