"""APScheduler as a ticker only: every ``TRACKER_TICK`` it runs the application steps, which ask the database
what is due. Missed ticks coalesce into one; nothing due is lost, because due times are rows, not timers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler

log = logging.getLogger("tracker.scheduler")

Step = Callable[[], Awaitable[object]]


class Ticker:
    def __init__(self, tick: timedelta, steps: dict[str, Step]) -> None:
        self.tick = tick
        self.steps = steps
        self._scheduler: AsyncIOScheduler | None = None

    def start(self) -> None:
        """Start ticking on the running event loop."""
        scheduler = AsyncIOScheduler(job_defaults={"coalesce": True, "max_instances": 1,
                                                   "misfire_grace_time": None})
        for name, step in self.steps.items():
            scheduler.add_job(self._run, "interval", args=[name, step], seconds=self.tick.total_seconds(),
                              id=name, name=name)
        scheduler.start()
        self._scheduler = scheduler
        log.info("scheduler ticking every %ss: %s", self.tick.total_seconds(), ", ".join(self.steps) or "nothing")

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None

    @staticmethod
    async def _run(name: str, step: Step) -> None:
        try:
            await step()
        except asyncio.CancelledError:
            # Stopping cancels the steps under way; what they had claimed returns when its lease ends. Ending
            # here keeps APScheduler from logging the cancellation as a failed job, with a traceback.
            log.debug("scheduled step %s cancelled: the scheduler is stopping", name)
        except Exception:
            log.exception("scheduled step %s failed; it runs again at the next tick", name)
