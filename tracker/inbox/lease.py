"""Which process applies the inbox, and what wakes it from other processes.

SQLite: every process may apply (its write lock takes them in turn) and nothing crosses processes. PostgreSQL:
a listener thread keeps one connection of its own that ``LISTEN``s for the inbox's ``NOTIFY`` (sent by every
process's inbox writer) and holds a session advisory lock while this process is the applier. The server drops
the lock with the session, so when the holder dies (or loses its connection) another process takes it within a
second. Notifications only wake: the applier reads the rows from the database.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy import Engine

from tracker.db.inbox import CHANNEL

log = logging.getLogger("tracker.inbox")
LOCK_KEY = 0x7472_6163_6B31  # "track1": the applier's advisory lock
RETRY = 1.0  # seconds between attempts to take the lock, and to reconnect
LISTEN_SLICE = 0.2  # how long one wait for notifications lasts (bounds how long stopping takes)


class Lease:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.shared = engine.dialect.name == "postgresql"
        self._held = not self.shared
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def held(self) -> bool:
        return self._held

    def start(self, wake: threading.Event) -> None:
        if self.shared and self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._listen, args=(wake,), name="tracker-inbox-listen",
                                             daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stopping.set()
            self._thread.join(timeout=5)
            self._thread = None
        self._held = not self.shared

    def _listen(self, wake: threading.Event) -> None:
        import psycopg

        url = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not self._stopping.is_set():
            try:
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    while not self._stopping.is_set():
                        if not self._held and _try_lock(conn):
                            log.info("this process now applies the inbox")
                            wake.set()  # before it shows as held: what was stored meanwhile is applied
                            self._held = True
                        for _ in conn.notifies(timeout=LISTEN_SLICE, stop_after=1):
                            wake.set()
            except Exception as exc:
                if self._held:
                    log.warning("lost the inbox applier's connection (%s); another process may take over",
                                type(exc).__name__)
                self._held = False
                self._stopping.wait(RETRY)
        self._held = False


def _try_lock(conn: Any) -> bool:
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
    return bool(row and row[0])
