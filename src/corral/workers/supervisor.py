"""The supervisor: ``corral serve`` itself, the parent of every process of the server.

::

    supervisor ─┬─ Gunicorn master ── HTTP workers      (python -m corral.workers http)
                ├─ dispatcher per model version         (python -m corral.workers dispatcher)
                └─ replicas of each model version       (python -m corral.workers replica)

One loop: wait for a signal or a child's exit, handle it, restart what died (with
backoff), and on SIGTERM/SIGINT stop in order: Gunicorn first (it drains in-flight
requests within the grace period), then dispatchers, then replicas; then remove
the runtime directory. Children run in their own process groups, so a Ctrl-C
reaches only the supervisor; each dies with it (parent-death signal).
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field

from .. import metrics
from ..config import Settings
from ..registry.catalog import Catalog
from .plan import Plan
from .devices import device_env
from .process import spawn
from .replica import MAX_LOAD_ATTEMPTS

logger = logging.getLogger(__name__)

_STABLE_AFTER = 30.0  # a child that ran this long restarts without backoff
_MAX_BACKOFF = 10.0


@dataclass(eq=False)
class Child:
    """One supervised process and when to start it again."""

    kind: str  # "http", "dispatcher" or "replica"
    label: str
    args: list[str]
    death_signal: int = signal.SIGKILL
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0  # consecutive quick deaths, for backoff
    load_attempt: int = 1  # replicas: which load() attempt this start is
    restart_at: float | None = 0.0  # None: do not restart
    on_start: list[str] = field(default_factory=list)  # a pid file to write
    starts: int = 0
    env: dict[str, str] = field(default_factory=dict)  # on top of the supervisor's
    marker: str = ""  # replicas: "<pid file>.<replica>", + ".ready" / ".failed"

    @property
    def ready_marker(self) -> str:
        return f"{self.marker}.ready"

    @property
    def failed_marker(self) -> str:
        return f"{self.marker}.failed"

    def start(self, env: dict[str, str]) -> None:
        extra = {"replica": [str(self.load_attempt), str(self.starts)],
                 "dispatcher": [str(self.starts)]}.get(self.kind, [])
        self.proc = spawn("corral.workers", self.kind, *self.args, *extra,
                          death_signal=self.death_signal, env={**env, **self.env})
        self.starts += 1
        self.started_at = time.monotonic()
        self.restart_at = None
        for path in self.on_start:
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                f.write(str(self.proc.pid))
            os.replace(tmp, path)
        logger.debug("started %s (pid %d)", self.label, self.proc.pid)


class Supervisor:
    """Starts, watches and stops the server's processes."""

    def __init__(self, target: str, settings: Settings, catalog: Catalog) -> None:
        self.settings = settings
        self.plan = Plan.create(target, settings, catalog.keys())
        self.children: list[Child] = []
        self._stopping = False
        self._failed_start = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        plan_path = str(self.plan.save())
        metrics_dir = os.path.join(self.plan.run_dir, "metrics")
        os.mkdir(metrics_dir, 0o700)
        self.env = {**os.environ, metrics.MULTIPROC_ENV: metrics_dir}
        for i, spec in enumerate(catalog):
            endpoints = self.plan.models[i]
            self.children.append(Child("dispatcher", f"dispatcher {spec.key}", [plan_path, str(i)],
                                       on_start=[endpoints.pid_file]))
            for r in range(spec.replicas):
                self.children.append(Child("replica", f"replica {spec.key} #{r}",
                                           [plan_path, str(i), str(r)],
                                           env=device_env(spec.device_for(r)),
                                           marker=f"{endpoints.pid_file}.{r}"))
        # Gunicorn drains gracefully on SIGTERM, so that is what it gets if we die.
        self.children.append(Child("http", "Gunicorn", [plan_path], death_signal=signal.SIGTERM))

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)
        signal.set_wakeup_fd(self._wake_w)
        logger.info("runtime directory %s", self.plan.run_dir)
        try:
            while not self._stopping:
                self.start_due()
                select.select([self._wake_r], [], [], self._next_timeout())
                self._drain_wakeups()
                self.reap()
            self.shutdown()
        finally:
            shutil.rmtree(self.plan.run_dir, ignore_errors=True)
        return 1 if self._failed_start else 0

    def _on_signal(self, signum: int, frame: object) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # HUP: terminal closed
            if not self._stopping:
                logger.info("received %s; stopping", signal.Signals(signum).name)
            self._stopping = True

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _next_timeout(self) -> float:
        due = [c.restart_at for c in self.children if c.proc is None and c.restart_at is not None]
        return max(0.0, min(due) - time.monotonic()) if due else 5.0

    def start_due(self) -> None:
        now = time.monotonic()
        # Dispatchers before replicas before Gunicorn: the list is in that order.
        for child in self.children:
            if child.proc is None and child.restart_at is not None and child.restart_at <= now:
                child.start(self.env)

    def reap(self) -> None:
        for child in self.children:
            if child.proc is None or child.proc.poll() is None:
                continue
            code = child.proc.returncode
            metrics.process_exited(child.proc.pid)
            child.proc = None
            if self._stopping:
                continue
            self.handle_exit(child, code)

    def handle_exit(self, child: Child, code: int) -> None:
        ran = time.monotonic() - child.started_at
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
        if child.kind == "http" and child.starts == 1 and ran < _STABLE_AFTER:
            # Gunicorn could not start (port in use, bad address): nothing to serve.
            logger.error("Gunicorn %s during start-up; stopping (see its message above)", how)
            self._failed_start = True
            self._stopping = True
            return
        if child.kind == "replica":
            if os.path.exists(child.ready_marker):
                os.unlink(child.ready_marker)
                child.load_attempt = 1
            elif child.load_attempt >= MAX_LOAD_ATTEMPTS:
                # load() raised, or the process died (OOM, crash) before it finished.
                logger.error("%s: load() failed %d times; the model is marked failed",
                             child.label, child.load_attempt)
                with open(child.failed_marker, "w") as f:
                    f.write(f"load() failed {child.load_attempt} times; see the server log.")
                return  # restart_at stays None
            else:
                child.load_attempt += 1
        child.failures = 0 if ran > _STABLE_AFTER else child.failures + 1
        delay = 0.0 if child.failures <= 1 else min(_MAX_BACKOFF, 0.25 * 2 ** child.failures)
        if child.kind == "replica" and child.load_attempt > 1:
            delay = max(delay, 0.5 * child.load_attempt)
        logger.warning("%s %s; restarting in %.1fs", child.label, how, delay)
        child.restart_at = time.monotonic() + delay

    # -- stopping ---------------------------------------------------------------------

    def shutdown(self) -> None:
        """Gunicorn drains first, then dispatchers stop, then replicas."""
        grace = self.settings.graceful_timeout + 5
        for kind, timeout in (("http", grace), ("dispatcher", 5.0), ("replica", 5.0)):
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
