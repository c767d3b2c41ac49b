"""Entry point of the supervisor's children: ``python -m corral.process KIND RUNTIME_DIR ARGS...``.

KIND is ``http`` (the Gunicorn master), ``dispatcher``, ``replica``, ``jobs`` or ``zygote``
(which forks replicas); each reads
what it needs from the instance's runtime directory. Only the module of KIND is
imported, so the dispatcher never loads Flask or the app.
"""

import importlib
import sys

_MODULES = {"http": "gunicorn", "dispatcher": "dispatcher", "replica": "replica",
            "jobs": "jobs", "zygote": "zygote"}

if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in _MODULES:
        sys.exit("usage: python -m corral.process {http|dispatcher|replica|jobs|zygote} RUNTIME_DIR [ARGS...]")
    module = importlib.import_module(f"corral.process.{_MODULES[sys.argv[1]]}")
    sys.exit(module.main(sys.argv[2:]))
