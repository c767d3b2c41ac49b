"""Logging set-up. Importing corral configures nothing; the CLI calls configure_logging().

Every process Corral starts logs to stderr (the supervisor's, so one stream holds the
whole server) in one format: plain text by default, JSON lines with
``CORRAL_LOG_FORMAT=json``. A record written while a batch is computed, by Corral or by
the model's own loggers, carries the request ids of that batch (:data:`REQUEST_IDS`).
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from typing import Any

# The request ids of the batch being computed in this thread, comma-separated.
REQUEST_IDS: ContextVar[str] = ContextVar("corral_request_ids", default="")

_TEXT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s%(request_tag)s"


class _RequestIds(logging.Filter):
    """Adds the current batch's request ids to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = REQUEST_IDS.get()
        record.request_ids = ids
        record.request_tag = f" [request {ids}]" if ids else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, pid, message, request ids, and the
    fields of a request-log line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": self.formatTime(record), "level": record.levelname, "logger": record.name,
            "pid": record.process, "message": record.getMessage(),
        }
        ids = getattr(record, "request_ids", "")
        if ids:
            doc["request_ids"] = ids.split(",")
        fields = getattr(record, "request", None)
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info:
            doc["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Send records to stderr, with the process id and the request ids of the batch.

    The root logger gets the handler, so that a model's own loggers are formatted alike;
    it is added only when the root logger has none, so an application that configured
    logging itself keeps its own. ``level`` applies to the corral.* loggers and the root.
    """
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.addFilter(_RequestIds())
        handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT))
        root.addHandler(handler)
        root.setLevel(level.upper())
    corral = logging.getLogger("corral")
    corral.setLevel(level.upper())
