"""The built-in load generator: HTTP/1.1 keep-alive over asyncio, closed or open loop.

It runs in a process of its own (``python -m corral.bench.loadgen``), so its CPU is
measured apart from the bench command and the server, and it does not share a GIL
with the progress display. The wire::

    stdin   one JSON object, a :class:`LoadSpec`
    stderr  progress lines ``P <answered> <failed>`` about five times a second
    stdout  one JSON object, a :class:`LoadResult`, at the end

Closed loop (``concurrency``): each connection sends a request, waits for the answer,
sends the next. Open loop (``rate``): request *i* is due at ``start + i / rate``
whatever the server does; it goes out on an idle connection (up to
``max_connections``, then it waits for one) and its latency is counted from when it
was due, so a server that stalls shows as the latency its users would see instead of
slowing the generator down (coordinated omission). ``send_lag`` records how late each
request actually went out, which says whether the asked rate was kept.

Requests are built once (bytes) and cycled; answers are read by Content-Length or
chunked framing and discarded. Every request started before the end of the run is
waited for (up to ``timeout``), so its count matches the server's.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from typing import Any

PROGRESS_EVERY = 0.2


@dataclass
class LoadSpec:
    host: str
    port: int
    path: str
    bodies: list[str]  # JSON bodies (text), cycled
    duration: float
    concurrency: int = 0  # closed loop when > 0
    rate: float = 0.0  # open loop when > 0 (requests per second)
    max_connections: int = 256  # open loop: connections it may open
    timeout: float = 30.0  # per request


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)  # seconds, every answered request
    statuses: dict[str, int] = field(default_factory=dict)
    socket_errors: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0  # from the first send to the last answer
    scheduled: int = 0  # open loop: requests due within the duration
    sent: int = 0
    sent_in_time: int = 0  # open loop: sent before the end of the duration
    send_lag: list[float] = field(default_factory=list)  # open loop, seconds
    connections: int = 0  # connections opened
    reopened: int = 0  # kept-alive connections found closed by the server, reopened
    # Open loop: requests that never got an answer (not sent, or cut off) by the end:
    # seconds from when each was due to when the generator gave up on it.
    unanswered: list[float] = field(default_factory=list)
    cpu_s: float = 0.0  # the generator's own CPU time during the run


class _Failed(Exception):
    def __init__(self, kind: str) -> None:
        self.kind = kind


class _Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reopened = False  # the last request found its connection closed while idle

    async def exchange(self, request: bytes) -> int:
        """Send one request and read its whole answer: the status code.

        A kept-alive connection that the server has closed while it was idle (its
        keep-alive timeout, a worker recycled) is reopened before the request goes out.
        A request once sent is never sent again: a connection that fails after that is
        an error, whatever the cause, so a crashing server cannot hide behind retries.
        """
        self.reopened = False
        if self.writer is not None and (self.writer.is_closing() or (
                self.reader is not None and self.reader.at_eof())):
            self.close()
            self.reopened = True
        if self.writer is None:
            try:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                raise _Failed("connect") from None
        assert self.reader is not None
        try:
            self.writer.write(request)
        except OSError:
            self.close()
            raise _Failed("write") from None
        reader = self.reader
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                if not 100 <= status < 200:
                    break  # 1xx answers are interim: the final one follows
            length, chunked, close = _framing(head)
            if chunked:
                await _read_chunked(reader)
            elif length is not None:
                await reader.readexactly(length)
            else:  # no framing: the body runs to the end of the connection
                await reader.read()
                close = True
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            self.close()
            raise _Failed("read") from None
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _framing(head: bytes) -> tuple[int | None, bool, bool]:
    """(Content-Length or None, chunked, connection closes) of a response head."""
    length: int | None = None
    chunked = close = False
    status = int(head[9:12])
    if status in (204, 304):
        length = 0  # no body, whatever the headers say
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length" and length is None:
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            close = b"close" in value.lower()
    return length, chunked, close


async def _read_chunked(reader: asyncio.StreamReader) -> None:
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        await reader.readexactly(size + 2)
        if size == 0:
            return


class LoadGenerator:
    """One run of a :class:`LoadSpec`."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.result = LoadResult()
        self.requests = [
            (f"POST {spec.path} HTTP/1.1\r\nHost: {spec.host}:{spec.port}\r\n"
             f"Content-Type: application/json\r\nContent-Length: {len(body.encode())}\r\n"
             f"\r\n").encode() + body.encode()
            for body in spec.bodies
        ]
        self._next = 0
        self._statuses: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._failed = 0
        self._last_answer = 0.0
        self._given_up = False

    def _request(self) -> bytes:
        self._next = (self._next + 1) % len(self.requests)
        return self.requests[self._next]

    async def _one(self, conn: _Connection, started: float) -> bool:
        """One request on ``conn``; latency counted from ``started``. False when the
        connection could not even be opened (the caller pauses before the next)."""
        try:
            async with asyncio.timeout(self.spec.timeout):
                status = await conn.exchange(self._request())
        except TimeoutError:
            conn.close()
            if self._given_up:  # counted already, at the end of the run
                return True
            self.result.unanswered.append(time.perf_counter() - started)
            self._errors["timeout"] += 1
            self._failed += 1
            return True
        except _Failed as exc:
            self._errors[exc.kind] += 1
            self._failed += 1
            return exc.kind != "connect"
        now = time.perf_counter()
        self.result.reopened += conn.reopened
        self._last_answer = now
        self.result.latencies.append(now - started)
        self._statuses[str(status)] += 1
        if status >= 400:
            self._failed += 1
        return True

    async def run(self) -> LoadResult:
        progress = asyncio.create_task(self._progress())
        cpu0 = time.process_time()
        self._start = time.perf_counter()
        self._end = self._start + self.spec.duration
        try:
            if self.spec.rate > 0:
                await self._open_loop()
            else:
                await self._closed_loop()
        finally:
            progress.cancel()
        r = self.result
        r.statuses, r.socket_errors = dict(self._statuses), dict(self._errors)
        r.elapsed = max(self._last_answer, self._end) - self._start
        r.cpu_s = time.process_time() - cpu0
        return r

    async def _closed_loop(self) -> None:
        async def user() -> None:
            conn = _Connection(self.spec.host, self.spec.port)
            self.result.connections += 1
            while time.perf_counter() < self._end:
                self.result.sent += 1
                if not await self._one(conn, time.perf_counter()):
                    await asyncio.sleep(0.01)  # a refused connection must not spin
            conn.close()

        await asyncio.gather(*(user() for _ in range(self.spec.concurrency)))
        if self._last_answer > self._end:
            self._end = self._last_answer  # the window closes with the last answer

    async def _open_loop(self) -> None:
        spec, result = self.spec, self.result
        idle: list[_Connection] = []
        backlog: deque[float] = deque()
        running: set[asyncio.Task[None]] = set()
        interval = 1.0 / spec.rate

        waiting: dict[asyncio.Task[None], float] = {}  # in flight: when it was due

        async def serve(conn: _Connection, due: float) -> None:
            task = asyncio.current_task()
            assert task is not None
            while True:
                now = time.perf_counter()
                result.send_lag.append(now - due)
                result.sent += 1
                result.sent_in_time += now < self._end
                waiting[task] = due
                try:
                    opened = await self._one(conn, due)
                except asyncio.CancelledError:  # given up on at the end of the run
                    conn.close()
                    raise
                del waiting[task]
                if not opened:
                    await asyncio.sleep(0.01)  # a refused connection must not spin
                if not backlog:
                    idle.append(conn)
                    return
                due = backlog.popleft()

        def launch(due: float) -> None:
            if idle:
                conn = idle.pop()
            elif result.connections < spec.max_connections:
                conn = _Connection(spec.host, spec.port)
                result.connections += 1
            else:
                backlog.append(due)
                return
            task = asyncio.create_task(serve(conn, due))
            running.add(task)
            task.add_done_callback(running.discard)

        i = 0
        while True:
            due = self._start + i * interval
            if due >= self._end:
                break
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            elif i % 32 == 0:
                await asyncio.sleep(0)  # behind schedule: let answers be read meanwhile
            launch(due)
            i += 1
        result.scheduled = i
        deadline = time.perf_counter() + spec.timeout
        while (running or backlog) and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        # What is left never got an answer: each counts as a timeout, with the time from
        # when it was due to now, so the percentiles cannot leave it out.
        now = time.perf_counter()
        self._given_up = True
        left = [now - due for due in [*waiting.values(), *backlog]]
        result.unanswered.extend(left)
        if left:
            self._errors["timeout"] += len(left)
            self._failed += len(left)
        for task in list(running):
            task.cancel()
        if running:
            await asyncio.wait(running)
        for conn in idle:
            conn.close()

    async def _progress(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            answered = sum(self._statuses.values())
            sys.stderr.write(f"P {answered} {self._failed}\n")
            sys.stderr.flush()


def spec_json(spec: LoadSpec) -> str:
    return json.dumps(asdict(spec))


def parse_result(raw: str) -> LoadResult:
    data: dict[str, Any] = json.loads(raw)
    return LoadResult(**data)


def main() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # one descriptor per connection: take what the system allows
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    spec = LoadSpec(**json.loads(sys.stdin.read()))
    result = asyncio.run(LoadGenerator(spec).run())
    sys.stdout.write(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
