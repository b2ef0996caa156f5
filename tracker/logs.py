"""How the log lines look: text for people, or one JSON object per line for log shippers
(``TRACKER_LOG_FORMAT``). Every logger goes through the one handler on the root logger, uvicorn's included.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import TextIO

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# connectFi does not sign its callbacks: the secret token is in the path it posts to.
_TOKEN_PATH = re.compile(r"(/webhooks/connectfi/)[^/?#\s]+")


def redact_path(path: str) -> str:
    """``path`` as it may be logged: without connectFi's webhook token."""
    return _TOKEN_PATH.sub(r"\1***", path) if "/webhooks/connectfi/" in path else path


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC), level, logger, message, and exc_info when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
                 .replace("+00:00", "Z"),
                 "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


class _AccessFilter(logging.Filter):
    """uvicorn's access lines (client, method, path with its query, version, status) without connectFi's token."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) > 2 and isinstance(args[2], str):
            record.args = (*args[:2], redact_path(args[2]), *args[3:])
        return True


_ACCESS_FILTER = _AccessFilter()
_installed: logging.Handler | None = None


def configure(level: str, form: str, stream: TextIO) -> logging.Handler:
    """Send every log record at ``level`` or above to ``stream`` in ``form`` (text or json); called again, it
    replaces the handler it installed before. uvicorn is then to be run with ``log_config=None`` (its records
    reach this handler instead of handlers of its own)."""
    global _installed
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if form == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
    root.addHandler(handler)
    root.setLevel(level)
    _installed = handler
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # handlers uvicorn's own set-up may have left
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("uvicorn.access").addFilter(_ACCESS_FILTER)
    return handler
