"""A real nginx (from Debian) in front of two Corral instances, configured by
`corral nginx`: requests spread, oversize bodies refused as problem+json, a stopped
instance skipped, the real client address logged, slow clients buffered by nginx."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import APPS, CORRAL, ServerProcess, free_port
from tests.proctree import wait_until

pytestmark = pytest.mark.slow

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
Serve = Callable[..., ServerProcess]


@pytest.fixture
def stack(serve: Serve, tmp_path: Path) -> Iterator[tuple[str, list[ServerProcess]]]:
    if not os.path.exists(NGINX):
        pytest.skip("needs nginx (apt-get install nginx)")
    env = {"CORRAL_PROXY_HOPS": "1", "CORRAL_ACCESS_LOG": "1", "CORRAL_MAX_BODY_BYTES": "65536"}
    instances = [serve(str(APPS / "echo_only.py"), "--workers", "1", "--threads", "1", env=env)
                 for _ in range(2)]
    port = free_port()
    site = subprocess.run([*CORRAL, "nginx", *(f"127.0.0.1:{s.port}" for s in instances),
                           "--port", f"127.0.0.1:{port}"], capture_output=True, text=True,
                          check=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "CORRAL_MAX_BODY_BYTES": "65536"}).stdout
    conf = tmp_path / "nginx"
    conf.mkdir()
    (conf / "corral.conf").write_text(site)
    temp = "\n".join(f"    {kind}_temp_path {conf}/{kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (conf / "nginx.conf").write_text(
        ("user root;\n" if os.getuid() == 0 else "")
        + f"daemon off;\npid {conf}/nginx.pid;\nerror_log {conf}/error.log;\n"
        f"worker_processes 1;\nevents {{ worker_connections 256; }}\n"
        f"http {{\n    access_log off;\n{temp}\n    include {conf}/corral.conf;\n}}\n")
    proc = subprocess.Popen([NGINX, "-c", str(conf / "nginx.conf"), "-p", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(url), 30, "nginx to listen")
        yield url, instances
    finally:
        proc.send_signal(signal.SIGQUIT)
        proc.wait(30)


def _answers(url: str) -> bool:
    try:
        return requests.get(url + "/healthz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def predict(url: str, value: int, **kw: object) -> requests.Response:
    kw.setdefault("timeout", 10)
    return requests.post(url + "/v1/models/sum/predict", json={"values": [value]},
                         **kw)  # type: ignore[arg-type]


def test_nginx_in_front_of_two_instances(stack: tuple[str, list[ServerProcess]],
                                         tmp_path: Path) -> None:
    url, instances = stack
    # Spread over both instances (each has its own replica), with a request id end to end.
    answers = [predict(url, i) for i in range(10)]
    assert [a.status_code for a in answers] == [200] * 10
    assert len({a.json()["pid"] for a in answers}) == 2
    assert all(len(a.headers["X-Request-ID"]) == 32 for a in answers)
    mine = predict(url, 1, headers={"X-Request-ID": "through-nginx-1"})
    assert mine.headers["X-Request-ID"] == "through-nginx-1"

    # The client's own address in the instance's request log, not nginx's nor a forged one.
    conn = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=10,
                                      source_address=("127.0.0.2", 0))
    conn.request("POST", "/v1/models/sum/predict", body=b'{"values": [5]}',
                 headers={"Content-Type": "application/json", "X-Request-ID": "from-0002",
                          "X-Forwarded-For": "6.6.6.6"})
    assert conn.getresponse().status == 200
    conn.close()
    wait_until(lambda: any("from-0002" in s.log() for s in instances), 10, "the log line")
    line = next(ln for s in instances for ln in s.log().splitlines() if "id=from-0002" in ln)
    assert "corral.access: 127.0.0.2 " in line and "6.6.6.6" not in line

    # An oversize body: nginx's 413, as problem+json.
    big = tmp_path / "big.json"
    big.write_bytes(b'{"values": [' + b"1," * 40_000 + b"1]}")
    out = subprocess.run(["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-H",
                          "Content-Type: application/json", "--data-binary", f"@{big}",
                          url + "/v1/models/sum/predict"], capture_output=True, text=True,
                         timeout=60)
    body, _, code = out.stdout.rpartition("\n")
    assert code == "413", out
    assert json.loads(body)["type"] == "payload-too-large"

    # A slow client trickles its body for 10 s; nginx holds it, not the one gthread thread
    # of each instance: other requests keep being answered meanwhile.
    host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])
    trickle_done = threading.Event()

    def trickle() -> None:
        body = b'{"values": [42]}'
        with socket.create_connection((host, port), timeout=30) as s:
            s.sendall(b"POST /v1/models/sum/predict HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/json\r\nContent-Length: "
                      + str(len(body)).encode() + b"\r\n\r\n")
            for i in range(len(body)):
                s.sendall(body[i:i + 1])
                time.sleep(10 / len(body))
            trickle_done.set()
            assert b" 200 " in s.recv(4096).split(b"\r\n")[0]

    slow = threading.Thread(target=trickle)
    slow.start()
    time.sleep(1)
    for i in range(6):
        assert predict(url, i, timeout=4).status_code == 200  # both instances stay free
    assert not trickle_done.is_set()  # all that while the slow client was still sending
    slow.join(30)

    # An instance stops: nginx skips it, and no request fails.
    instances[1].stop()
    answers = [predict(url, i) for i in range(10)]
    assert [a.status_code for a in answers] == [200] * 10
    assert len({a.json()["pid"] for a in answers}) == 1
