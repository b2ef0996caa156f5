"""The channel used when no other is configured: the notice goes to the log (and stays in the database)."""

from __future__ import annotations

import logging

from tracker.alerting.base import Notice

log = logging.getLogger("tracker.alerts")


class LogChannel:
    name = "log"

    async def send(self, notice: Notice) -> None:
        log.warning("ALERT %s [%s] %s — %s (notice %s)", notice.action, notice.severity, notice.title, notice.advice,
                    notice.key)
