"""The zygote: replicas forked from a process that has already imported the app.

``python -m corral.process zygote RUNTIME_DIR``. A fresh interpreter, started by the
supervisor like its other children, imports what a replica imports before ``load()``
(Corral's replica code, pydantic, and the app module with its types), freezes
those objects out of the garbage collector's reach, and then only forks: each replica
is a child of it that shares those pages with it and with every other replica, copy on
write, instead of importing them again into memory of its own. A model's own weights
are loaded after the fork, in ``load()``, as before.

Each replica is forked twice, so that it is re-parented to the supervisor (a child
subreaper) and is the supervisor's child like any other: the supervisor reaps it,
signals it and sees its exit status, and it dies with the supervisor (parent-death
signal, set once re-parented), but not with the zygote: a zygote that crashes takes no
replica with it and is simply restarted.

Fork safety: the zygote starts no thread and opens no socket to other processes; if importing
the app started one, it forks nothing and the supervisor spawns fresh interpreters
instead (``CORRAL_REPLICA_START=spawn`` does the same for every replica).
"""

from __future__ import annotations

import atexit
import gc
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from .runtime import Runtime
from .spawn import die_with_parent
from .title import set_title

logger = logging.getLogger(__name__)

ZYGOTE_CANNOT_FORK = 3  # exit code: this app cannot be forked safely (it started threads)
_READY_WAIT = 60.0  # seconds the supervisor waits for a starting zygote (it imports the app)
_ANSWER_WAIT = 10.0


class ForkedProcess:
    """A replica the zygote forked, as the supervisor holds it: the part of
    ``subprocess.Popen`` the supervisor uses (it is the supervisor's child)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: it is gone all the same
                self.returncode = -signal.SIGKILL
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"replica {self.pid}", timeout or 0.0)
            time.sleep(0.01)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ZygoteNotReady(Exception):
    """The zygote is still importing the app: ask again shortly."""


class ZygoteClient:
    """The supervisor's side: ask the zygote for a replica."""

    def __init__(self, runtime: Runtime) -> None:
        self.path = str(runtime.zygote)

    def fork(self, args: list[str], env: dict[str, str], started_at: float) -> ForkedProcess:
        """A replica running ``python -m corral.process replica ARGS`` with ``env`` on top
        of the supervisor's environment, from a zygote (still running) that started at
        ``started_at`` (monotonic). Raises ZygoteNotReady while it is still importing the
        app, and OSError when it cannot fork (or took too long to get ready)."""
        if not os.path.exists(self.path):
            if time.monotonic() - started_at < _READY_WAIT:
                raise ZygoteNotReady()
            raise OSError(f"the zygote did not get ready in {_READY_WAIT:.0f} s")
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.settimeout(_ANSWER_WAIT)
            sock.connect(self.path)
            sock.send(json.dumps({"args": args, "env": env}).encode())
            answer = json.loads(sock.recv(65536) or b"{}")
        if "pid" not in answer:
            raise OSError(answer.get("error", "the zygote did not answer"))
        return ForkedProcess(int(answer["pid"]))


def _replica(args: list[str], env: dict[str, str], supervisor: int) -> int:
    """In the forked replica: become what ``spawn`` would have started, then run."""
    os.setpgid(0, 0)  # its own process group, as spawned children have
    deadline = time.monotonic() + 5
    while os.getppid() != supervisor:  # the intermediate process is exiting
        if time.monotonic() >= deadline:
            return 1
        time.sleep(0.001)
    if not die_with_parent(signal.SIGKILL, supervisor):  # it died meanwhile
        return 1
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    os.environ.update(env)
    # The imported objects stay frozen (gc.unfreeze would have the first full collection
    # write to every one of them, copying the zygote's pages into this process).
    numpy = sys.modules.get("numpy")
    if numpy is not None:  # its global random state would be the zygote's in every replica
        numpy.random.seed()
    from .replica import main

    return main(args)


def _fork(request: dict[str, Any], listener: socket.socket, conn: socket.socket,
          supervisor: int) -> int:
    """Fork twice; return the replica's pid (the intermediate process is reaped here)."""
    args = [str(a) for a in request["args"]]
    env = {str(k): str(v) for k, v in request.get("env", {}).items()}
    sys.stdout.flush()  # or what the app printed at import is written again by each child
    sys.stderr.flush()
    read, write = os.pipe()
    try:
        middle = os.fork()
    except OSError:
        os.close(read)
        os.close(write)
        raise
    if middle == 0:
        code = 1
        try:
            os.close(read)
            pid = os.fork()
            if pid == 0:
                os.close(write)
                listener.close()
                conn.close()
                try:
                    code = _replica(args, env, supervisor)
                except SystemExit as exc:
                    if exc.code is None or isinstance(exc.code, int):
                        code = exc.code or 0
                    else:
                        print(exc.code, file=sys.stderr)
                        code = 1
                except BaseException:
                    logger.exception("replica %s: crashed", " ".join(args[1:3]))
                    code = 1
                finally:
                    # What the interpreter's own exit would do, then leave without
                    # running the zygote's cleanup.
                    try:
                        atexit._run_exitfuncs()
                        logging.shutdown()
                        sys.stdout.flush()
                        sys.stderr.flush()
                    finally:
                        os._exit(code)
            os.write(write, str(pid).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    try:
        with os.fdopen(read, "rb") as pipe:
            data = pipe.read()
    finally:
        os.waitpid(middle, 0)
    if not data:
        raise OSError("fork failed")
    return int(data)


def _gpu_runtime_loaded() -> bool:
    """Whether a CUDA or ROCm driver library is mapped (a GPU runtime initialised at import
    cannot be used after a fork)."""
    try:
        maps = open("/proc/self/maps").read()
    except OSError:
        return False
    return "libcuda.so" in maps or "libamdhip64.so" in maps


def main(argv: list[str]) -> int:
    from ..discover import load_server
    from ..log import configure_logging
    from . import replica  # noqa: F401  (imported here once, shared by every replica)

    runtime = Runtime(argv[0])
    target, settings = runtime.read_plan()
    configure_logging(settings.log_level, settings.log_format)
    set_title("zygote", runtime.path)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    supervisor = os.getppid()
    load_server(target).catalog(settings)  # the app's modules and the models' types
    if threading.active_count() > 1 or _gpu_runtime_loaded():
        logger.warning("importing %s started a thread or a GPU runtime, which a fork would "
                       "copy half-way: replicas are started as fresh processes instead "
                       "(import heavy frameworks inside Model.load())", target)
        return ZYGOTE_CANNOT_FORK
    gc.collect()
    gc.freeze()  # imported objects stay out of the collector's passes: their pages stay shared
    path = str(runtime.zygote)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for stale in (path, f"{path}.tmp"):  # a previous zygote's, if it died
        try:
            os.unlink(stale)
        except FileNotFoundError:
            pass
    listener.bind(f"{path}.tmp")
    listener.listen(16)
    os.replace(f"{path}.tmp", path)  # there once it listens: the supervisor waits for it
    while True:
        conn, _ = listener.accept()
        with conn:
            try:
                request = json.loads(conn.recv(65536))
                conn.send(json.dumps({"pid": _fork(request, listener, conn, supervisor)})
                          .encode())
            except Exception as exc:  # a bad request, or fork failed: say so, keep serving
                try:
                    conn.send(json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode())
                except OSError:
                    pass
