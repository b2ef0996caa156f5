"""The ticker: stopping it while a step runs ends that step quietly (no failed job, no traceback)."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from tracker.scheduler import Ticker


async def test_stopping_during_a_step_logs_no_failure(caplog) -> None:
    running, finished = asyncio.Event(), asyncio.Event()

    async def slow_step() -> None:
        running.set()
        await asyncio.Event().wait()  # until cancelled
        finished.set()

    ticker = Ticker(timedelta(seconds=0.05), {"slow": slow_step})
    with caplog.at_level(logging.DEBUG):
        ticker.start()
        await asyncio.wait_for(running.wait(), 10)
        ticker.stop()
        for _ in range(100):  # until the cancelled step has ended (the executor's callbacks run on the loop)
            await asyncio.sleep(0)
            if any("cancelled: the scheduler is stopping" in r.getMessage() for r in caplog.records):
                break
    assert any("cancelled: the scheduler is stopping" in r.getMessage() for r in caplog.records)
    assert not finished.is_set()
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert "Traceback" not in caplog.text
