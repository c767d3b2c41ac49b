"""Readable process titles, so that ``ps`` shows what each process of a server is.

::

    corral: supervisor [RUNTIME_DIR]
    corral: dispatcher [RUNTIME_DIR]
    corral: replica iris:1 #0 [RUNTIME_DIR]
    gunicorn: master [corral] / gunicorn: worker [corral]   (Gunicorn's own)
"""

from __future__ import annotations

from setproctitle import setproctitle


def set_title(role: str, runtime_dir: object) -> None:
    """``corral: ROLE [RUNTIME_DIR]``: the role first, for ``ps`` and ``pgrep -f``."""
    setproctitle(f"corral: {role} [{runtime_dir}]")
