"""The pure parts of the load tester: durations, percentiles, comparing runs, reading
/metrics, Lua escaping; and the built-in generator against a small local HTTP server."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import click
import pytest


def test_durations_and_lists() -> None:
    from corral.cli.bench import parse_duration, parse_numbers

    assert parse_duration("10", "-d") == 10
    assert parse_duration("500ms", "-d") == 0.5
    assert parse_duration("2m", "-d") == 120
    assert parse_duration(" 1.5s ", "-d") == 1.5
    for bad in ("10x", "", "-1s", "s"):
        with pytest.raises(click.BadParameter):
            parse_duration(bad, "-d")
    assert parse_numbers("1,4, 16", "-c", int) == [1, 4, 16]
    for bad in ("1,a", "0", "-4", ","):
        with pytest.raises(click.BadParameter):
            parse_numbers(bad, "-c", int)


def test_percentiles_are_nearest_rank() -> None:
    from corral.bench.results import percentile, summarize_latencies

    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99
    assert percentile(values, 99.9) == 100 and percentile(values, 0) == 1
    summary, points = summarize_latencies([0.001 * v for v in range(1, 1001)])
    assert summary["p50"] == pytest.approx(500) and summary["max"] == pytest.approx(1000)
    assert summary["p999"] == pytest.approx(999)
    assert [p for p, _ in points][0] == 0 and points[-1] == [100.0, pytest.approx(1000)]
    assert summarize_latencies([]) == ({}, [])


def _run(**changes: Any) -> dict[str, Any]:
    run: dict[str, Any] = {"model": "iris", "mode": "closed", "concurrency": 16, "rate": None,
                           "requests": 1000, "rps": 100.0, "errors": 0,
                           "latency_ms": {"p50": 10.0, "p99": 40.0},
                           "socket_errors": {"timeout": 0}}
    run.update(changes)
    return run


def test_compare_flags_each_kind_of_regression() -> None:
    from corral.bench.results import compare

    old = {"runs": [_run(), _run(concurrency=64), _run(model="other")]}
    new = {"runs": [_run(rps=89.0), _run(concurrency=64, latency_ms={"p50": 10, "p99": 45}),
                    _run(model="other", errors=20), _run(model="new-only")]}
    changes = compare(old, new, threshold=0.1)
    flagged = {(c.model, c.level, c.metric) for c in changes if c.regressed}
    assert flagged == {("iris", "16 conns", "rps"), ("iris", "64 conns", "p99"),
                       ("other", "16 conns", "errors")}
    assert {c.model for c in changes} == {"iris", "other"}  # cells in both runs only
    errors = next(c for c in changes if c.model == "other" and c.metric == "errors")
    assert errors.change == "+2.00 pp"
    assert not any(c.regressed for c in compare(old, old, threshold=0.0))


def test_one_rule_for_levels_and_failures() -> None:
    """The table, the report, the generators and --compare share these two rules."""
    from corral.bench.generators import Level
    from corral.bench.results import failures, level_label

    assert [Level(concurrency=1).label, Level(concurrency=16).label, Level(rate=2.5).label] \
        == ["1 conn", "16 conns", "2.5/s"]
    assert level_label({"mode": "closed", "concurrency": 1, "rate": None}) == "1 conn"
    assert failures({"200": 5, "304": 1, "422": 2, "503": 0}, {"timeout": 3, "read": 0}) \
        == {"422": 2, "timeout": 3}


def test_check_format_names_the_file() -> None:
    from corral.bench.results import check_format

    with pytest.raises(ValueError, match="x.json is not a corral bench --json file"):
        check_format([], "x.json")
    with pytest.raises(ValueError, match="no valid \"runs\""):
        check_format({"format": "corral-bench/1", "runs": [{"model": "a"}]}, "y.json")


METRICS_BEFORE = """\
corral_requests_total{model="iris",version="1",status="200"} 10.0
corral_requests_total{model="other",version="1",status="200"} 5.0
corral_batch_size_bucket{le="1.0",model="iris"} 4.0
corral_batch_size_bucket{le="2.0",model="iris"} 4.0
corral_batch_size_bucket{le="4.0",model="iris"} 5.0
corral_batch_size_bucket{le="+Inf",model="iris"} 5.0
corral_batch_size_count{model="iris"} 5.0
corral_batch_size_sum{model="iris"} 7.0
"""
METRICS_AFTER = """\
corral_requests_total{model="iris",version="1",status="200"} 30.0
corral_requests_total{model="iris",version="1",status="503"} 2.0
corral_requests_total{model="other",version="1",status="200"} 50.0
corral_batch_size_bucket{le="1.0",model="iris"} 6.0
corral_batch_size_bucket{le="2.0",model="iris"} 8.0
corral_batch_size_bucket{le="4.0",model="iris"} 11.0
corral_batch_size_bucket{le="+Inf",model="iris"} 11.0
corral_batch_size_count{model="iris"} 11.0
corral_batch_size_sum{model="iris"} 27.0
corral_queue_wait_seconds_count{model="iris"} 20.0
corral_queue_wait_seconds_sum{model="iris"} 0.1
corral_predict_duration_seconds_count{model="iris"} 6.0
corral_predict_duration_seconds_sum{model="iris"} 0.06
"""


def test_server_side_is_the_difference_of_two_reads() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from corral.bench.scrape import server_side

    def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        return {(s.name, frozenset(s.labels.items())): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}

    side = server_side(parse(METRICS_BEFORE), parse(METRICS_AFTER), "iris")
    assert side["requests"] == 22 and side["statuses"] == {"200": 20, "503": 2}
    assert side["batches"] == 6 and side["batch_mean"] == pytest.approx(20 / 6)
    assert side["batch_hist"] == {"1": 2, "2": 2, "3-4": 2, ">4": 0}
    assert side["queue_wait_ms_mean"] == pytest.approx(5.0)
    assert side["predict_ms_mean"] == pytest.approx(10.0)


def test_lua_strings_escape_every_byte() -> None:
    from corral.bench.wrk import lua_string, wrk_script

    assert lua_string(b'{"a":"q\\"\\\\"}') == '"{\\"a\\":\\"q\\\\\\"\\\\\\\\\\"}"'
    assert lua_string("é\n".encode()) == '"\\195\\169\\010"'
    script = wrk_script("iris", "/v1/models/iris/predict", [b'{"x":1}', b'{"x":2}'])
    assert 'local path = "/v1/models/iris/predict"' in script
    assert '"{\\"x\\":1}",' in script and '"{\\"x\\":2}",' in script


# -- the built-in generator against a tiny HTTP server ----------------------------


class TinyServer:
    """Answers every POST with 200 (Content-Length, or chunked every 3rd answer, or
    closing the connection every 5th); counts the requests it read. Other ``mode``s:
    ``idle-close`` closes each connection silently after its answer (a keep-alive
    timeout), ``drop`` closes it after reading every 5th request, ``continue`` sends ``100 Continue`` first, ``eof`` frames the body by
    closing, ``silent`` never answers."""

    def __init__(self, mode: str = "mixed") -> None:
        self.mode = mode
        self.count = 0
        self.dropped = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(5)

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self._client, sock=self.sock)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                self.count += 1
                if self.mode == "silent":
                    continue
                if self.mode == "drop" and self.count % 5 == 0:  # dies after reading it
                    self.dropped += 1
                    writer.close()
                    return
                if self.mode == "idle-close":  # a keep-alive timeout of 20 ms
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                    await writer.drain()
                    await asyncio.sleep(0.02)
                    writer.close()
                    return
                if self.mode == "continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                if self.mode == "eof":
                    writer.write(b"HTTP/1.1 200 OK\r\n\r\n{\"no\": \"length\"}")
                    await writer.drain()
                    writer.close()
                    return
                if self.count % 3 == 0:
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 b"4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n")
                elif self.count % 5 == 0:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                                 b"Connection: close\r\n\r\n{}")
                    await writer.drain()
                    writer.close()
                    return
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client left, or the server stops
        finally:
            writer.close()

    async def _stop(self) -> None:
        self.server.close()
        mine = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not mine]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0.05)  # let the closed transports release their sockets

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def tiny(request: pytest.FixtureRequest) -> Iterator[TinyServer]:
    server = TinyServer(getattr(request, "param", "mixed"))
    yield server
    server.close()


@pytest.mark.parametrize("tiny", ["idle-close", "continue", "eof"], indirect=True)
def test_builtin_generator_takes_what_servers_do(tiny: TinyServer) -> None:
    """A kept-alive connection the server closed while idle is reopened before the
    request goes (not an error); a 100 Continue is not the answer; a body framed by the
    end of the connection is read to its end."""
    from corral.bench.loadgen import LoadGenerator, LoadSpec

    idle = tiny.mode == "idle-close"  # requests 100 ms apart: each finds it closed
    spec = LoadSpec(host="127.0.0.1", port=tiny.port, path="/p", bodies=["{}"],
                    duration=1.0 if idle else 0.5, concurrency=0 if idle else 2,
                    rate=10.0 if idle else 0.0, timeout=5)
    result = asyncio.run(LoadGenerator(spec).run())
    answered = len(result.latencies)
    assert result.socket_errors == {} and result.statuses == {"200": answered}
    assert tiny.count == answered > (5 if idle else 10)  # each request sent once
    assert result.reopened == (answered - 1 if idle else 0)


@pytest.mark.parametrize("tiny", ["drop"], indirect=True)
def test_a_dropped_request_is_an_error_never_sent_again(tiny: TinyServer) -> None:
    """A server that closes the connection after reading every 5th request: each of those
    is a read error, none is retried (the server read each request once)."""
    from corral.bench.loadgen import LoadGenerator, LoadSpec

    spec = LoadSpec(host="127.0.0.1", port=tiny.port, path="/p", bodies=["{}"],
                    duration=0.5, concurrency=2, timeout=5)
    result = asyncio.run(LoadGenerator(spec).run())
    answered = len(result.latencies)
    assert tiny.dropped > 5 and result.socket_errors == {"read": tiny.dropped}
    assert tiny.count == answered + tiny.dropped == result.sent


@pytest.mark.parametrize("tiny", ["silent"], indirect=True)
def test_open_loop_counts_what_never_got_an_answer(tiny: TinyServer) -> None:
    """A server that stops answering: every request due counts, as a timeout, with its
    time since due; none simply disappears."""
    from corral.bench.loadgen import LoadGenerator, LoadSpec

    spec = LoadSpec(host="127.0.0.1", port=tiny.port, path="/p", bodies=["{}"],
                    duration=0.5, rate=40.0, max_connections=4, timeout=0.5)
    result = asyncio.run(LoadGenerator(spec).run())
    assert result.scheduled == 20 and result.latencies == [] and result.statuses == {}
    assert result.socket_errors == {"timeout": 20}
    # Over 4 connections some went out and were cut off by their own timeout, the rest
    # never went out and were given up at the end; either way each has its time since due.
    assert 4 <= result.sent < 20 and len(result.unanswered) == 20
    assert all(0.45 < s < 2 for s in result.unanswered)


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_builtin_generator_reads_every_framing(tiny: TinyServer, mode: str) -> None:
    from corral.bench.loadgen import LoadGenerator, LoadSpec

    spec = LoadSpec(host="127.0.0.1", port=tiny.port, path="/p", bodies=['{"x":1}'],
                    duration=0.5, concurrency=4 if mode == "closed" else 0,
                    rate=200.0 if mode == "open" else 0.0, timeout=5)
    result = asyncio.run(LoadGenerator(spec).run())
    answered = len(result.latencies)
    assert result.socket_errors == {} and result.statuses == {"200": answered}
    assert answered == tiny.count and answered > 20  # every request read, none lost
    if mode == "open":
        assert result.scheduled == 100 and result.sent == 100 == answered
        assert len(result.send_lag) == 100


def test_builtin_generator_counts_refused_connections() -> None:
    from corral.bench.loadgen import LoadGenerator, LoadSpec

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    spec = LoadSpec(host="127.0.0.1", port=port, path="/p", bodies=["{}"], duration=0.3,
                    concurrency=2, timeout=1)
    result = asyncio.run(LoadGenerator(spec).run())
    assert result.latencies == [] and result.socket_errors.get("connect", 0) > 0
