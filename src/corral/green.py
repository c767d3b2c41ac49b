"""Whether this process runs under gevent (Gunicorn's gevent worker patches it after fork)."""

from __future__ import annotations

import sys


def gevent_patched() -> bool:
    """True when gevent has monkey-patched ``threading`` in this process."""
    if "gevent" not in sys.modules:  # never import gevent where it is not in use
        return False
    from gevent import monkey

    return bool(monkey.is_module_patched("threading"))
