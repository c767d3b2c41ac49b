"""Logging set-up. Importing corral configures nothing; the CLI calls configure_logging()."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str = "info") -> None:
    """Send corral.* records to stderr with a timestamp and the process id.

    Adds a handler only when the ``corral`` logger has none, so an application
    that configured logging itself keeps its own.
    """
    logger = logging.getLogger("corral")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s")
        )
        logger.addHandler(handler)
        logger.propagate = False
