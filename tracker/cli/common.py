"""What every command shares: the settings and the log set-up."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

from tracker import logs
from tracker.settings import Settings


def settings_from_env() -> Settings:
    return Settings.from_env()


def start_logging(settings: Settings, stream: TextIO | None = None) -> None:
    """Log to stderr (or ``stream``) at ``TRACKER_LOG_LEVEL`` in ``TRACKER_LOG_FORMAT``: text, or one JSON object
    per line. uvicorn's loggers reach the same handler when it runs with ``uvicorn_logging``."""
    logs.configure(settings.log_level, settings.log_format, sys.stderr if stream is None else stream)
    # uvicorn's loggers follow the root's level, but for the access lines: TRACKER_ACCESS_LOG alone turns them on.
    logging.getLogger("uvicorn.access").setLevel(logging.INFO)
    if logging.getLevelName(settings.log_level) != logging.DEBUG:
        # APScheduler only ticks here: at INFO it would log every step of every tick (several lines a second).
        # Its warnings (a missed or failed tick) still show; TRACKER_LOG_LEVEL=debug shows everything.
        logging.getLogger("apscheduler").setLevel(logging.WARNING)


def uvicorn_logging(settings: Settings) -> dict[str, Any]:
    """uvicorn's logging options: no configuration of its own (its records go to the root logger's handler, in
    the same format, at the same level: ``start_logging``), and access lines only when ``TRACKER_ACCESS_LOG``
    is on."""
    return {"log_config": None, "log_level": None, "access_log": settings.access_log}


def ready(container: Any) -> None:
    """The schema a command needs before it touches the tables (``bootstrap.require_schema``)."""
    from tracker.bootstrap import require_schema

    require_schema(container.engine, container.settings)
