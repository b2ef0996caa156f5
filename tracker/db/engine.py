"""Engine construction. SQLite runs in WAL mode with a busy timeout; PostgreSQL through psycopg 3."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from tracker.errors import SettingsError

SQLITE_BUSY_TIMEOUT_MS = 5000


def normalise_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean psycopg 3; SQLite URLs pass through."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True,
                           pool_recycle=1800)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Every session in UTC: timestamps then come back with datetime.timezone.utc, which converting to UTC
        # (UTCDateTime, tracker.db.reads) passes through for free instead of going through a ZoneInfo.
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        dbapi_connection.execute("SET TIME ZONE 'UTC'")
        dbapi_connection.autocommit = autocommit

    return engine


def _sqlite_engine(url: str) -> Engine:
    parsed = make_url(url)
    memory = parsed.database in (None, "", ":memory:")
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}}
    if memory:
        from sqlalchemy.pool import StaticPool

        kwargs["poolclass"] = StaticPool
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN, so write transactions can take the lock up front.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if not memory:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # FULL: a commit survives power loss, not only a killed process; webhooks are acknowledged after it.
        cursor.execute("PRAGMA synchronous=FULL" if not memory else "PRAGMA synchronous=OFF")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


_writers: dict[int, threading.RLock] = {}
_writers_guard = threading.Lock()


def transient(exc: BaseException) -> bool:
    """A deadlock or serialization failure (SQLSTATE class 40), wrapped by SQLAlchemy or raised by the driver's
    own cursor: the transaction may simply be run again."""
    orig = getattr(exc, "orig", None) or exc
    return str(getattr(orig, "sqlstate", "") or "").startswith("40")


@contextmanager
def writing(engine: Engine) -> Iterator[None]:
    """SQLite: hold the process's turn to write while a write transaction runs. SQLite has one writer at a time,
    and a writer that finds the database locked sleeps in its busy handler in growing steps (up to 100 ms) however
    soon the lock is free; threads of one process take turns here instead, handed over at once. PostgreSQL:
    nothing (its row locks decide)."""
    if engine.dialect.name != "sqlite":
        yield
        return
    with _writers_guard:
        lock = _writers.setdefault(id(engine), threading.RLock())
    with lock:
        yield


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction that will write (write-locked from its start on SQLite), committed on success."""
    with writing(engine), engine.connect().execution_options(**write_options(engine)) as conn, conn.begin():
        yield conn


def write_options(engine: Engine) -> dict[str, Any]:
    """Execution options for a transaction that will write: on SQLite, take the write lock at BEGIN so a
    read-then-write transaction cannot fail half-way on a lock upgrade."""
    return {"sqlite_begin": "IMMEDIATE"} if engine.dialect.name == "sqlite" else {}


def check_engine(engine: Engine) -> None:
    """Start-up check: the database answers; on SQLite, WAL mode and the busy timeout are in force."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            timeout = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
            if str(mode).lower() != "wal":
                raise SettingsError(f"TRACKER_DATABASE_URL: SQLite is in {mode} mode, not WAL; is the file on a "
                                    "file system that supports WAL?")
            if not timeout:
                raise SettingsError("TRACKER_DATABASE_URL: SQLite busy timeout could not be set")
