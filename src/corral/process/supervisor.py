"""The supervisor: ``corral serve`` itself, the parent of every process of the server.

::

    supervisor ─┬─ Gunicorn master ── HTTP workers      (python -m corral.process http)
                ├─ dispatcher, for every model          (python -m corral.process dispatcher)
                ├─ zygote, which forks the replicas     (python -m corral.process zygote)
                ├─ replicas of each model version       (forked by the zygote, re-parented
                │                                        here; or python -m corral.process replica)
                └─ jobs: the embedded jobs loop, or      (python -m corral.process jobs)
                   the Celery worker of corral worker

One loop: wait for a signal, a child's exit or a command on the control socket,
handle it, restart what died (with backoff), and on SIGTERM/SIGINT stop in order:
Gunicorn first (it drains in-flight requests within the grace period), then the
jobs process, then the dispatcher, then replicas; then remove the runtime directory. Children run in
their own process groups, so a Ctrl-C reaches only the supervisor; each dies with
it (parent-death signal).

The control socket (``ctl`` in the runtime directory) takes Command messages:
``load``, ``unload`` and ``set_replicas`` of a declared model version. The
supervisor records the change in models.json, starts or retires replica
processes, and tells the dispatcher (Configure). A replica no longer wanted is
stopped by the dispatcher once its batch is done, so no request fails.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import metrics
from ..config import Settings
from ..dispatch.devices import device_env
from ..errors import CorralError, InvalidInput, ModelNotFound
from ..registry.catalog import Catalog
from ..transport.protocol import Command, Configure, ProtocolError, Reply, decode, encode
from ..transport.stream import Hub, Link, Peer, SendFailed
from ..dispatch.core import MAX_REPLICAS
from .replica import MAX_LOAD_ATTEMPTS
from .runtime import ModelEntry, Runtime
from .spawn import raise_open_files_limit, set_child_subreaper, spawn
from .zygote import (
    ZYGOTE_CANNOT_FORK,
    ForkedProcess,
    ZygoteClient,
    ZygoteNotReady,
)
from .title import set_title

logger = logging.getLogger(__name__)

_CONFIGURE_WAIT = 1.0  # a dispatcher that does not read for this long is being restarted
_STABLE_AFTER = 30.0  # a child that ran this long restarts without backoff
_MAX_BACKOFF = 10.0


@dataclass(eq=False)
class Child:
    """One supervised process and when to start it again."""

    kind: str  # "http", "dispatcher", "zygote", "replica" or "jobs"
    label: str
    args: list[str]
    death_signal: int = signal.SIGKILL
    proc: subprocess.Popen[bytes] | ForkedProcess | None = None
    started_at: float = 0.0
    failures: int = 0  # consecutive quick deaths, for backoff
    load_attempt: int = 1  # replicas: which load() attempt this start is
    restart_at: float | None = 0.0  # None: do not restart
    starts: int = 0
    env: dict[str, str] = field(default_factory=dict)  # on top of the supervisor's
    model: str = ""  # replicas: name:version
    index: int = 0  # replicas: the slot
    retired_at: float | None = None  # replicas no longer wanted: when they were told

    def start(self, env: dict[str, str], fork: Callable[[list[str], dict[str, str]],
                                                      ForkedProcess] | None = None) -> None:
        """Spawn a fresh interpreter, or have ``fork`` (the zygote) fork the process."""
        extra = {"replica": [str(self.load_attempt), str(self.starts)]}.get(self.kind, [])
        self.proc = None
        if fork is not None:
            try:
                self.proc = fork([*self.args, *extra], self.env)
            except ZygoteNotReady:
                self.restart_at = time.monotonic() + 0.05  # try again shortly, not blocking
                return
            except (OSError, ValueError) as exc:
                logger.warning("%s: the zygote could not fork it (%s); starting a fresh "
                               "interpreter", self.label, exc)
        if self.proc is None:
            self.proc = spawn("corral.process", self.kind, *self.args, *extra,
                              death_signal=self.death_signal, env={**env, **self.env})
        self.starts += 1
        self.started_at = time.monotonic()
        self.restart_at = None
        logger.debug("started %s (pid %d)", self.label, self.proc.pid)


class Supervisor:
    """Starts, watches and stops the server's processes."""

    def __init__(self, target: str, settings: Settings, catalog: Catalog,
                 http: bool = True, jobs: bool = True, inline: bool = True) -> None:
        """``inline``: the HTTP workers that use this tree (its own, or a WSGI server's
        started with CORRAL_RUNTIME_DIR) run the inline models themselves; false for
        ``corral worker``, which has no HTTP workers and runs every model here."""
        self.settings = settings
        self.catalog = catalog
        self.runtime = Runtime.create(settings)
        self.runtime.write_plan(target, settings)
        self.models = {str(spec.key): ModelEntry.of(spec) for spec in catalog
                       if not (inline and spec.inline)}
        self.runtime.write_models(list(self.models.values()))
        self.children: list[Child] = []
        self._stopping = False
        self._exit_code = 0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.env = {**os.environ, metrics.MULTIPROC_ENV: str(self.runtime.metrics_dir)}
        raise_open_files_limit()
        run_dir = str(self.runtime.path)
        self.children.append(Child("dispatcher", "dispatcher", [run_dir]))
        # Replicas are forked from a zygote that has imported the app (shared pages),
        # and re-parented here: this process must be their subreaper.
        self._zygote: Child | None = None
        self._subreaper = False
        if settings.replica_start == "fork" and set_child_subreaper():
            self._subreaper = True
            self._zygote = Child("zygote", "zygote", [run_dir])
            self.children.append(self._zygote)
            self._zygote_client = ZygoteClient(self.runtime)
        for key, entry in self.models.items():
            for index in range(entry.replicas):
                self._add_replica(key, index)
        if jobs:
            self.children.append(Child("jobs", "jobs", [run_dir], death_signal=signal.SIGTERM))
        if http:
            # Gunicorn drains gracefully on SIGTERM, so that is what it gets if we die.
            self.children.append(Child("http", "Gunicorn", [run_dir],
                                       death_signal=signal.SIGTERM))
        self._dispatcher = Link(self.runtime.frontend)  # Configure, when a model changes

    def _add_replica(self, key: str, index: int) -> None:
        spec = self.catalog.resolve(*key.rsplit(":", 1))
        self.children.append(Child("replica", f"replica {key} #{index}",
                                   [str(self.runtime.path), key, str(index)],
                                   env=device_env(spec.device_for(index)), model=key,
                                   index=index))

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD,
                    signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(sig, self._on_signal)
        signal.set_wakeup_fd(self._wake_w)
        set_title("supervisor", self.runtime.path)
        logger.info("runtime directory %s", self.runtime.path)
        hub = Hub()
        hub.listen(self.runtime.control, "c")
        hub.watch(self._wake_r)
        try:
            while not self._stopping:
                self.start_due()
                messages, _ = hub.poll(self._next_timeout() + 0.001)
                self._drain_wakeups()
                for peer, frames in messages:
                    self._serve_control(hub, peer, frames)
                self.reap()
                self.retire_stragglers()
            self.shutdown()
        finally:
            hub.close()
            self._dispatcher.close()
            self.runtime.remove()
        return self._exit_code

    def _on_signal(self, signum: int, frame: object) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            if not self._stopping:
                logger.info("received %s; stopping", signal.Signals(signum).name)
            self._stopping = True
        elif signum in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
            # Gunicorn's own meaning, passed to its master: HUP replaces the HTTP workers
            # gracefully, TTIN adds one, TTOU removes one.
            master = next((c.proc for c in self.children if c.kind == "http" and c.proc), None)
            if master is not None and master.poll() is None:
                master.send_signal(signum)
            zygote = self._zygote.proc if self._zygote is not None else None
            if signum == signal.SIGHUP and zygote is not None and zygote.poll() is None:
                zygote.send_signal(signal.SIGTERM)  # replicas started from now on: new code

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _next_timeout(self) -> float:
        due = [c.restart_at for c in self.children if c.proc is None and c.restart_at is not None]
        return max(0.0, min(due) - time.monotonic()) if due else 1.0

    def start_due(self) -> None:
        now = time.monotonic()
        # Dispatcher before replicas before Gunicorn: the list is in that order.
        for child in self.children:
            if child.proc is None and child.restart_at is not None and child.restart_at <= now:
                fork = self._fork if child.kind == "replica" and self._zygote else None
                child.start(self.env, fork)

    def _fork(self, args: list[str], env: dict[str, str]) -> ForkedProcess:
        """A replica from the zygote; OSError when there is none to ask."""
        zygote = self._zygote
        if zygote is None or zygote.proc is None or zygote.proc.poll() is not None:
            if zygote is not None and zygote.restart_at is not None and zygote.failures < 3:
                raise ZygoteNotReady()  # being restarted: wait for it, as at start-up
            raise OSError("no zygote")
        return self._zygote_client.fork(args, env, zygote.started_at)

    def reap(self) -> None:
        if self._subreaper:
            self._reap_orphans()
        for child in list(self.children):
            code = None if child.proc is None else child.proc.poll()
            if child.proc is None or code is None:
                continue
            metrics.process_exited(child.proc.pid, str(self.runtime.metrics_dir))
            child.proc = None
            loaded = False
            if child.kind == "replica":
                marker = self.runtime.ready_marker(child.model, child.index)
                loaded = marker.exists()
                marker.unlink(missing_ok=True)
            if self._stopping:
                continue
            if child.retired_at is not None:
                self.children.remove(child)
                logger.info("%s stopped (no longer wanted)", child.label)
                self._fill_slots(child.model)  # wanted again while it was leaving
                continue
            self.handle_exit(child, code, loaded)

    def _reap_orphans(self) -> None:
        """Reap processes re-parented here that are not ours to watch (as a subreaper this
        process inherits every orphan below it, e.g. Gunicorn workers whose master died)."""
        known = {c.proc.pid for c in self.children if c.proc is not None}
        try:
            tasks = os.listdir("/proc/self/task")
            pids = {int(p) for t in tasks
                    for p in open(f"/proc/self/task/{t}/children").read().split()}
        except (OSError, ValueError):
            return
        for pid in pids - known:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    continue
                # Alive: a replica the zygote forked whose pid never reached us (its answer
                # was lost) would serve a slot twice; nothing else of ours is unknown.
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    title = f.read()
                if title.startswith((b"corral: replica", b"corral: zygote")):
                    logger.warning("stopping pid %d, a replica nobody started", pid)
                    os.kill(pid, signal.SIGKILL)
            except (ChildProcessError, OSError):
                pass

    def handle_exit(self, child: Child, code: int, loaded: bool) -> None:
        ran = time.monotonic() - child.started_at
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
        if child.kind == "http" and child.starts == 1 and ran < _STABLE_AFTER:
            # Gunicorn could not start (port in use, bad address): nothing to serve.
            logger.error("Gunicorn %s during start-up; stopping (see its message above)", how)
            self._exit_code, self._stopping = 1, True
            return
        if child.kind == "zygote":
            self.runtime.zygote.unlink(missing_ok=True)
        if child.kind == "zygote" and code == ZYGOTE_CANNOT_FORK:
            logger.warning("replicas are started as fresh interpreters from now on")
            self._zygote = None
            return  # restart_at stays None
        if child.kind == "replica" and code == 0:
            # Recycled after its max_requests (the dispatcher let it finish): start afresh.
            logger.info("%s recycled; starting a fresh one", child.label)
            child.failures, child.load_attempt, child.restart_at = 0, 1, time.monotonic()
            return
        if child.kind == "replica":
            if loaded:
                child.load_attempt = 1
            elif child.load_attempt >= MAX_LOAD_ATTEMPTS:
                # load() raised, or the process died (OOM, crash) before it finished.
                logger.error("%s: load() failed %d times; the model is marked failed",
                             child.label, child.load_attempt)
                entry = self.models[child.model]
                error = self.runtime.load_error_file(child.model, child.index)
                entry.failed[child.index] = (error.read_text() if error.exists() else
                                             f"load() failed {child.load_attempt} times; see "
                                             "the server log.")
                self.runtime.write_models(list(self.models.values()))
                self._configure(child.model)  # a replica that died loading said nothing
                if self.settings.exit_when_all_failed and len(self.models) == len(
                        list(self.catalog)) and all(
                        m.replicas and len(m.failed) >= m.replicas for m in self.models.values()):
                    logger.error("every model failed to load; stopping with exit code 1 "
                                 "(CORRAL_EXIT_WHEN_ALL_FAILED)")
                    self._exit_code, self._stopping = 1, True
                return  # restart_at stays None
            else:
                child.load_attempt += 1
        child.failures = 0 if ran > _STABLE_AFTER else child.failures + 1
        delay = 0.0 if child.failures <= 1 else min(_MAX_BACKOFF, 0.25 * 2 ** child.failures)
        if child.kind == "replica" and child.load_attempt > 1:
            delay = max(delay, 0.5 * child.load_attempt)
        logger.warning("%s %s; restarting in %.1fs", child.label, how, delay)
        child.restart_at = time.monotonic() + delay

    # -- control ----------------------------------------------------------------------

    def _serve_control(self, hub: Hub, peer: Peer, frames: list[bytes]) -> None:
        try:
            msg = decode(frames)
        except ProtocolError as exc:
            logger.warning("control socket: dropped a message: %s", exc)
            return
        if not isinstance(msg, Command):
            return
        error: dict[str, Any] | None = None
        try:
            self.command(msg)
        except CorralError as exc:
            error = exc.to_dict()
        hub.send(peer, encode(Reply(id=msg.id, error=error)))

    def command(self, msg: Command) -> None:
        """Carry out load, unload or set_replicas; CorralError if it cannot be done."""
        entry = self.models.get(msg.model)
        if entry is None:
            raise ModelNotFound(f"No model version {msg.model!r}; declared: "
                                f"{', '.join(sorted(self.models))}.")
        retry = False
        if msg.op == "load":
            replicas = entry.replicas or entry.declared_replicas
            retry = True
        elif msg.op == "unload":
            replicas = 0
        elif msg.op == "set_replicas" and msg.replicas is not None:
            replicas = msg.replicas
        else:
            raise InvalidInput(f"Unknown command {msg.op!r}.")
        if not 0 <= replicas <= MAX_REPLICAS:
            raise InvalidInput(f"replicas must be between 0 and {MAX_REPLICAS}; got {replicas}.")
        logger.info("model %s: %s -> %d replica(s)", msg.model, msg.op, replicas)
        entry.replicas = replicas
        if retry:
            entry.failed.clear()
        self.runtime.write_models(list(self.models.values()))
        mine = [c for c in self.children if c.kind == "replica" and c.model == msg.model]
        for child in mine:
            if child.index >= replicas and child.retired_at is None:
                child.retired_at = time.monotonic()
                if child.proc is None:
                    self.children.remove(child)
            elif retry and child.retired_at is None:
                # Also a replica whose last attempt has not been reaped yet: it starts over.
                child.load_attempt, child.failures = 1, 0
                if child.proc is None:
                    child.restart_at = time.monotonic()
        self._fill_slots(msg.model)
        self._configure(msg.model, retry)

    def _fill_slots(self, key: str) -> None:
        """A replica process for every wanted slot that has none. A slot whose leaving
        replica still runs is filled once it has exited: one process per slot."""
        taken = {c.index for c in self.children if c.kind == "replica" and c.model == key}
        for index in range(self.models[key].replicas):
            if index not in taken:
                self._add_replica(key, index)

    def _configure(self, key: str, retry: bool = False) -> None:
        """Tell the dispatcher what models.json now says of one model."""
        entry = self.models[key]
        msg = Configure(model=key, replicas=entry.replicas, retry=retry,
                        failed={str(i): e for i, e in entry.failed.items()})
        try:
            self._dispatcher.send(encode(msg), _CONFIGURE_WAIT)
        except SendFailed:  # no dispatcher now: it reads models.json when it starts
            pass

    def retire_stragglers(self) -> None:
        """Replicas no longer wanted that the dispatcher could not stop get SIGTERM, once
        their batch has had every chance to finish (the model's timeout and stall grace)."""
        now = time.monotonic()
        for child in self.children:
            if child.retired_at is None or child.proc is None or child.proc.poll() is not None:
                continue
            grace = max(self.settings.graceful_timeout,
                        self.models[child.model].timeout + self.settings.stall_grace) + 5
            if child.retired_at < now - grace:
                logger.warning("%s did not stop when asked; terminating it", child.label)
                child.proc.terminate()
                child.retired_at = float("inf")

    # -- stopping ---------------------------------------------------------------------

    def shutdown(self) -> None:
        """Gunicorn drains first, then the jobs process stops (a job it was running is
        taken over at the next start), then the dispatcher, then replicas."""
        grace = self.settings.graceful_timeout + 5
        for kind, timeout in (("http", grace), ("jobs", 10.0), ("dispatcher", 5.0),
                              ("zygote", 5.0), ("replica", 5.0)):
            self._stop(kind, timeout)
        logger.info("stopped")

    def _stop(self, kind: str, timeout: float) -> None:
        procs = [c.proc for c in self.children if c.kind == kind and c.proc is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("pid %d did not stop within %.0fs; killing it", proc.pid, timeout)
                proc.kill()
                proc.wait()
