"""What every command shares: the settings, the log set-up and the start-up line."""

from __future__ import annotations

import logging
import sys
from datetime import timedelta
from typing import Any, TextIO

import tracker
from tracker import logs
from tracker.domain.lifecycle import PROVIDERS
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


def describe(container: Any) -> str:
    """The start-up line: what this process runs against and with, never a secret (the database URL without
    its password, the providers by name, thresholds, alert channels)."""
    settings = container.settings
    webhooks = [name for name, on in (("blaaiz", settings.blaaiz_webhook_secrets),
                                      ("connectfi", settings.connectfi_webhook_token),
                                      ("cryptopocket", settings.cryptopocket_api_secret)) if on]
    overrides = [f"{p} {_span(settings.overdue_for(p))}/{_span(settings.critical_for(p))}" for p in PROVIDERS
                 if (settings.overdue_for(p), settings.critical_for(p))
                 != (settings.overdue_after, settings.critical_after)]
    return (f"tracker {tracker.__version__}: database {container.engine.url.render_as_string(hide_password=True)}; "
            f"webhooks accepted from {', '.join(webhooks) or 'no provider (no secrets set)'}; "
            f"polling {', '.join(container.poller.plans) or 'no provider (no credentials set)'}; "
            f"overdue after {_span(settings.overdue_after)}, critical after {_span(settings.critical_after)}"
            f"{' (' + '; '.join(overrides) + ')' if overrides else ''}; "
            f"alerts to {', '.join(settings.alert_channels())}")


def _span(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
