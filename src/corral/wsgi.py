"""``corral.wsgi:application`` for any WSGI server (uWSGI, Waitress, ...).

Serves the models named by ``CORRAL_APP`` (``path/to/app.py`` or ``module:attr``),
in-process, with settings from the ``CORRAL_*`` environment.
"""

from __future__ import annotations

from .discover import load_server
from .config import Settings
from .errors import StartupError

_settings = Settings()
if not _settings.app:
    raise StartupError("Set CORRAL_APP to the models to serve, e.g. CORRAL_APP=app.py.")
application = load_server(_settings.app).create_app(_settings)
