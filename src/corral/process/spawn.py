"""Starting child processes that can never outlive the supervisor."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name, use_errno=True) if name else None


_LIBC = _libc() if sys.platform.startswith("linux") else None


def die_with_parent(sig: int, parent: int) -> bool:
    """Receive ``sig`` when ``parent`` (this process's parent now) dies; False if it
    already has (before the parent-death signal took effect)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    return os.getppid() == parent


def set_child_subreaper() -> bool:
    """Make orphaned descendants of this process its children (Linux); whether it worked."""
    return _LIBC is not None and _LIBC.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def raise_open_files_limit() -> None:
    """Raise this process's soft limit on open files to its hard limit, for it and the
    children it starts: the dispatcher holds a connection per HTTP thread (workers ×
    threads), past a soft limit of 1024 at 16 workers of 64 threads."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError):  # not allowed here: keep the limit there is
        pass


def _die_with_parent(sig: int, parent: int) -> Callable[[], None]:
    def preexec() -> None:
        # Runs in the child between fork and exec. The parent-death signal survives exec.
        if not die_with_parent(sig, parent):
            os._exit(1)
    return preexec


def spawn(module: str, *args: str, death_signal: int = signal.SIGKILL,
          env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Run ``python -m module args...`` as a fresh interpreter (spawned, never forked state).

    The child gets its own process group, so a Ctrl-C or SIGTERM sent to the
    terminal's process group reaches only the supervisor, which stops children in
    order; and it receives ``death_signal`` if the supervisor dies.
    """
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        preexec_fn=_die_with_parent(death_signal, os.getpid()),
        process_group=0,
        close_fds=True,
        env=env,
    )
