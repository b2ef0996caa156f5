"""What every command shares: the settings and the log set-up."""

from __future__ import annotations

import logging
import sys
from typing import Any

from tracker.settings import Settings


def settings_from_env() -> Settings:
    return Settings.from_env()


def start_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if logging.getLevelName(settings.log_level) != logging.DEBUG:
        # APScheduler only ticks here: at INFO it would log every step of every tick (several lines a second).
        # Its warnings (a missed or failed tick) still show; TRACKER_LOG_LEVEL=debug shows everything.
        logging.getLogger("apscheduler").setLevel(logging.WARNING)


def ready(container: Any) -> None:
    """The schema a command needs before it touches the tables (``bootstrap.require_schema``)."""
    from tracker.bootstrap import require_schema

    require_schema(container.engine, container.settings)
