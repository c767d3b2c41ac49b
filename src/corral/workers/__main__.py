"""Entry point of the supervisor's children: ``python -m corral.workers KIND ARGS...``.

KIND is ``http`` (the Gunicorn master), ``dispatcher`` or ``replica``; each reads
the instance's plan file named in ARGS.
"""

import sys

from . import dispatcher, http, replica

_MAINS = {"http": http.main, "dispatcher": dispatcher.main, "replica": replica.main}

if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in _MAINS:
        sys.exit("usage: python -m corral.workers {http|dispatcher|replica} PLAN [ARGS...]")
    sys.exit(_MAINS[sys.argv[1]](sys.argv[2:]))
