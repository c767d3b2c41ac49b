"""Real Redis and RabbitMQ servers for the jobs tests, started fresh on free ports.

Each keeps its data in a temporary directory and is stopped at the end; servers that
happen to run on the machine are never used. Redis runs with the append-only file on
(``appendfsync always``), as docs/jobs.md asks of a production job store.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import free_port


def _find(*candidates: str) -> str:
    for c in candidates:
        found = shutil.which(c) or (c if Path(c).is_file() else None)
        if found:
            return found
    raise RuntimeError(f"none of {candidates} is installed (scripts/test installs them)")


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server not listening on {port} within {timeout}s:\n{log.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server and whatever it started in its session (Erlang's processes)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    """A redis-server with persistence; yields its URL."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = directory / "redis.log"
    proc = subprocess.Popen(
        [_find("redis-server", "/usr/bin/redis-server"), "--port", str(port),
         "--bind", "127.0.0.1", "--dir", str(directory), "--appendonly", "yes",
         "--appendfsync", "always", "--save", "", "--daemonize", "no",
         "--logfile", str(log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_port(port, proc, log, 30)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc)


@contextmanager
def rabbitmq_server(directory: Path) -> Iterator[str]:
    """A RabbitMQ node of its own (own name, ports, data, no plugins); yields its URL."""
    directory.mkdir(parents=True, exist_ok=True)
    port, dist = free_port(), free_port()
    (directory / "enabled_plugins").write_text("[].\n")
    (directory / "rabbitmq-env.conf").write_text("")
    (directory / "rabbitmq.conf").write_text(
        f"listeners.tcp.default = 127.0.0.1:{port}\nloopback_users = none\n")
    env = {
        "PATH": "/usr/lib/rabbitmq/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "HOME": str(directory),  # its own Erlang cookie
        "RABBITMQ_CONF_ENV_FILE": str(directory / "rabbitmq-env.conf"),
        "RABBITMQ_NODENAME": f"corraltest{port}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist),
        "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
        "RABBITMQ_LOG_BASE": str(directory / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
        "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq.conf"),
        "RABBITMQ_PLUGINS_EXPAND_DIR": str(directory / "plugins-expand"),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
    }
    log = directory / "rabbitmq.out"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [_find("/usr/lib/rabbitmq/bin/rabbitmq-server", "rabbitmq-server")],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_port(port, proc, log, 90)
        yield f"amqp://guest:guest@127.0.0.1:{port}//"
    finally:
        _stop(proc)
