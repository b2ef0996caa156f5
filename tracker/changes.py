"""The change feed as streams read it: one reader per process follows the ``changes`` table and keeps its recent
entries in memory for every stream of the process; a stream further behind (resumed after a disconnect or a
restart) reads its backlog from the database. The store is the truth: wake-ups (this process's commits, other
processes' ``NOTIFY`` on PostgreSQL, a timer for anything else) only say when to read it again."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from tracker.clock import Clock
from tracker.db import feed
from tracker.db.engine import write_transaction

log = logging.getLogger("tracker.changes")
KEPT = 20_000  # recent entries kept in memory for the streams of this process
READ = 1_000  # entries read from the database at once
FALLBACK = 1.0  # seconds: read again without a wake-up (SQLite's other processes; a lost notification)
# seconds a wake-up waits for more commits before the feed is read: every read wakes every stream of the process,
# so under load they read (and send) a batch of changes each a few times a second, not one change each time
GATHER = 0.02
RETENTION = timedelta(days=7)  # how long the feed keeps entries (how far back a stream can resume)
LISTEN_SLICE = 0.2


@dataclass(frozen=True)
class Entry:
    id: int
    kind: str
    data: dict[str, Any]  # what a stream sends: the id, kind, provider, customer_id, at and the body
    text: str  # the event as Server-Sent Events put it, written once for every stream that sends it

    @classmethod
    def of(cls, row: Any) -> Entry:
        data = {"id": row.id, "kind": row.kind, "provider": row.provider, "customer_id": row.customer_id,
                "at": row.at.isoformat().replace("+00:00", "Z"), **json.loads(row.body)}
        return cls(row.id, row.kind, data, f"id: {row.id}\nevent: {row.kind}\ndata: {json.dumps(data)}\n\n")


class ChangeHub:
    def __init__(self, engine: Engine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock
        self.position = 0  # the last id this process has read
        # Lists, not deques: a stream takes the entries after its id by bisection and a slice (a deque's
        # indexing walks it). Trimmed to KEPT once they hold twice as many.
        self._recent: list[Entry] = []
        self._ids: list[int] = []
        self._news = asyncio.Event()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._started: asyncio.Future[None] | None = None
        self._stopping = threading.Event()
        self._listener: threading.Thread | None = None
        self._pruned_at: datetime | None = None
        self._sent: dict[int, tuple[int, bytes]] = {}  # text_after's, until the feed moves on

    # -- the reader ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start following the feed from its current end (idempotent; on the running loop). Streams that open
        together wait for the one start."""
        started = self._started
        if started is None:
            started = self._started = asyncio.get_running_loop().create_future()
            try:
                await self._begin()
            except BaseException as exc:
                self._started = None  # the next stream tries again
                started.set_exception(exc)
                started.exception()  # retrieved here: the waiting streams raise it
                raise
            started.set_result(None)
        await asyncio.shield(started)

    async def _begin(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._news, self._wake = asyncio.Event(), asyncio.Event()
        self.position = await asyncio.to_thread(self._last)
        self._stopping.clear()
        if self.engine.dialect.name == "postgresql":
            self._listener = threading.Thread(target=self._listen, name="tracker-changes-listen", daemon=True)
            self._listener.start()
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        self._started = None
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._listener is not None:
            await asyncio.to_thread(self._listener.join, 5)
            self._listener = None

    def poke(self) -> None:
        """Something was committed: read the feed again (from any thread)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    async def _follow(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FALLBACK)
            await asyncio.sleep(GATHER)
            self._wake.clear()
            try:
                fresh = await asyncio.to_thread(self._read, self.position, READ)
                while fresh:
                    self._recent += fresh
                    self._ids += [entry.id for entry in fresh]
                    if len(self._ids) > 2 * KEPT:
                        del self._recent[:-KEPT], self._ids[:-KEPT]
                    self.position = fresh[-1].id
                    self._sent.clear()
                    news, self._news = self._news, asyncio.Event()
                    news.set()
                    fresh = await asyncio.to_thread(self._read, self.position, READ) if len(fresh) == READ else []
            except Exception:
                log.exception("reading the change feed failed; retrying")

    def _listen(self) -> None:
        import psycopg

        url = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not self._stopping.is_set():
            try:
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {feed.CHANNEL}")
                    self.poke()  # what was committed while this connection was down
                    while not self._stopping.is_set():
                        for _ in conn.notifies(timeout=LISTEN_SLICE, stop_after=1):
                            self.poke()
            except Exception as exc:
                log.warning("change feed listener lost its connection (%s); reconnecting", type(exc).__name__)
                self._stopping.wait(1.0)

    # -- what streams call --------------------------------------------------------------------------------

    def recent_after(self, last_id: int) -> list[Entry] | None:
        """The entries after ``last_id`` from memory; None when they are older than memory holds."""
        if last_id >= self.position:
            return []
        if not self._ids or last_id < self._ids[0] - 1:
            return None
        return self._recent[bisect.bisect_right(self._ids, last_id):]

    def text_after(self, last_id: int) -> tuple[int, bytes] | None:
        """What an unfiltered stream at ``last_id`` sends next from memory: the last id and the events' text,
        joined and encoded once for every stream at that id; None when memory does not hold them."""
        kept = self._sent.get(last_id)
        if kept is None:
            entries = self.recent_after(last_id)
            if not entries:
                return None
            kept = self._sent[last_id] = (entries[-1].id, "".join(entry.text for entry in entries).encode())
        return kept

    async def after(self, last_id: int) -> list[Entry]:
        """The entries after ``last_id``: from memory when it holds them, else (a stream far behind) up to
        ``READ`` of them from the database."""
        kept = self.recent_after(last_id)
        if kept is not None:
            return kept
        return await asyncio.to_thread(self._read, last_id, READ)

    def news(self) -> asyncio.Event:
        """Set when entries newer than those read so far arrive. Take it before asking for entries (``after``),
        then wait on it: what arrives in between sets it."""
        return self._news

    # -- the database -------------------------------------------------------------------------------------

    def _read(self, last_id: int, limit: int) -> list[Entry]:
        with self.engine.connect() as conn:
            return [Entry.of(row) for row in feed.after(conn, last_id, limit)]

    def _last(self) -> int:
        with self.engine.connect() as conn:
            return feed.last_id(conn)

    def prune(self) -> int:
        """Forget entries older than ``RETENTION`` (at most once an hour per process; a worker job)."""
        now = self.clock.now()
        if self._pruned_at is not None and now - self._pruned_at < timedelta(hours=1):
            return 0
        self._pruned_at = now
        with write_transaction(self.engine) as conn:
            return feed.prune(conn, now - RETENTION)
