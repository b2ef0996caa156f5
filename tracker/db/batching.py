"""Point reads asked for by many event-loop tasks at once, fetched together in batches on a thread of their own
(see ``tracker.db.reads``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

Row = dict[str, Any]


class Batcher:
    """Gathers the point reads that event-loop tasks ask for while earlier batches are being fetched, and
    fetches them together in the next batch, on dedicated threads (at most ``in_flight`` batches at once, each
    thread with its own kept connection)."""

    def __init__(self, fetch: Callable[[Sequence[int]], Mapping[int, Row]], in_flight: int = 1) -> None:
        self._fetch = fetch
        self._max = in_flight
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: dict[int, list[asyncio.Future[Row | None]]] = {}
        self._scheduled = False
        self._running = 0

    async def get(self, customer_id: int) -> Row | None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (tests start one per test): start afresh on it
            self._loop, self._waiting, self._scheduled, self._running = loop, {}, False, 0
        future: asyncio.Future[Row | None] = loop.create_future()
        self._waiting.setdefault(customer_id, []).append(future)
        if not self._scheduled and self._running < self._max:
            self._scheduled = True
            loop.call_soon(self._send, loop)
        return await future

    def _send(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:
            return
        self._scheduled = False
        batch, self._waiting = self._waiting, {}
        if not batch:
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self._max, thread_name_prefix="tracker-reads")
        self._running += 1
        done = self._executor.submit(self._fetch, list(batch))
        done.add_done_callback(lambda result: loop.call_soon_threadsafe(self._answer, loop, batch, result))

    def _answer(self, loop: asyncio.AbstractEventLoop, batch: dict[int, list[asyncio.Future[Row | None]]],
                result: Future[Mapping[int, Row]]) -> None:
        error = result.exception()
        rows = result.result() if error is None else {}
        for customer_id, futures in batch.items():
            row = rows.get(customer_id)
            for future in futures:
                if future.done():
                    continue
                if error is not None:
                    future.set_exception(error)
                else:
                    # Each waiter gets its own dict: callers may add to it.
                    future.set_result(row if len(futures) == 1 or row is None else dict(row))
        if loop is self._loop:
            self._running -= 1
            if self._waiting and not self._scheduled:
                self._send(loop)  # what queued up meanwhile goes now, in one batch

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

