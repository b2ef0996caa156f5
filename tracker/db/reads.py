"""The API's customer reads: ``GET /v1/customers/{id}`` and the filtered, cursor-paginated list.

These are the hottest queries of the service, so they skip SQLAlchemy's per-statement and per-row work: one
hand-written SQL statement each, run on a DBAPI cursor, rows decoded into plain dicts with the values
SQLAlchemy gives (``queries.get_customer`` / ``queries.list_customers`` stay the reference; tests compare the
two). They read only ``API_COLUMNS``, what the API shows: the customers table keeps growing columns for the
scheduler, and every column read costs time on every request.

Point reads (``CustomerReads.get``, and ``CustomerReads.key``: only what the ETag is made of, for
``If-None-Match``):

The reads that arrive while earlier ones are on their way are batched into one statement, run by a dedicated
thread on a connection it keeps, one batch at a time; the event loop serves other requests meanwhile. (Two
batches in flight made smaller batches and cost more CPU per read: bench/read's GET went from about 0.59 to
0.70 of bare's CPU ratio with one, on PostgreSQL.)

- PostgreSQL: ``WHERE id = ANY(...)``, one round trip a batch.
- SQLite (reading the file through a memory map): the whole batch comes back as one JSON text, one row
  (``json_group_array``). The sqlite3 module releases and re-takes the GIL at every row it steps, and under
  load each re-take waits for the event loop's turn; one row a batch takes one turn, and orjson decodes the
  rows. Until 2026-12-05 these reads ran inline on the event loop, one statement each, which was cheaper
  than a thread hop per read; bench/read (1,000,000 customers, three rounds) moved from GET 0.54 / 304 0.80
  of bare to 0.69 / 0.91 with the batch (server CPU per GET 77 to 65 us, bare 42).

A failed statement drops the kept connection (the next read opens a new one; a read that failed because the
connection was lost is retried once on a new one) and raises SQLAlchemy's ``DBAPIError``, which the web layer
answers with 503, as for any other query.

Lists (``CustomerReads.page``, in a worker thread, on a pooled connection) name their index on SQLite, whose
planner has no statistics (nobody runs ANALYZE) and would otherwise pick an equality index and sort a third
of the table. PostgreSQL plans them itself; the partial indexes for the tier and pending filters
(``tables.Customer``) serve both.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from tracker.db.batching import Batcher
from tracker.db.tables import customers
from tracker.db.types import UTCDateTime
from tracker.domain.lifecycle import PROVIDERS, State

# What the API shows of a customer (tracker.web.responses.customer_json), its ETag and the list's cursor.
API_COLUMNS: tuple[str, ...] = (
    "id", "provider", "provider_customer_id", "reference", "application_id", "customer_type", "state",
    "provider_status", "tier", "pending_since", "decided_at", "rejection_reason", "attempts", "rejections",
    "discovered_by", "flags", "created_at", "updated_at", "version", "deadline_tier", "deadline_at",
    "last_polled_at", "next_poll_at", "last_poll_error", "last_signal_at", "touches",
)
# What the ETag is made of: a poll changes no version, but what the record says of its polls (``touches``).
KEY_COLUMNS: tuple[str, ...] = ("id", "version", "touches")
_PENDING = State.PENDING.value
# Every customer belongs to one of these (registration and the provider modules only ever store these), so a
# search by provider_customer_id alone can use the (provider, provider_customer_id) unique index.
_ANY_PROVIDER = "provider IN (" + ", ".join(f"'{p}'" for p in PROVIDERS) + ")"

SQLITE_MMAP_SIZE = 1 << 30
Row = dict[str, Any]
Decoder = Callable[[Sequence[Any]], Row]


def _decoder(columns: Sequence[str], sqlite: bool) -> Decoder:
    """Raw DBAPI row -> dict with SQLAlchemy's values: UTCDateTime columns as aware UTC datetimes."""
    names = tuple(columns)
    stamps = tuple(i for i, name in enumerate(names) if isinstance(customers.c[name].type, UTCDateTime))
    if not stamps:
        return lambda row: dict(zip(names, row, strict=True))
    if sqlite:
        def convert(value: Any) -> datetime:  # stored as naive UTC text, as SQLAlchemy writes it
            # Parsing the offset along is several times cheaper than .replace(tzinfo=UTC) after; same value.
            return datetime.fromisoformat(value + "+00:00")
    else:
        def convert(value: Any) -> datetime:
            return value.astimezone(UTC)  # type: ignore[no-any-return]

    def decode(row: Sequence[Any]) -> Row:
        values = list(row)
        for i in stamps:
            if values[i] is not None:
                values[i] = convert(values[i])
        return dict(zip(names, values, strict=True))

    return decode


class CustomerReads:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sqlite = engine.dialect.name == "sqlite"
        self._dbapi_error: type[Exception] = engine.dialect.loaded_dbapi.Error
        self._mark = "?" if self.sqlite else "%s"
        # Timestamps bound exactly as SQLAlchemy binds them (on SQLite: text, compared as text).
        bind = UTCDateTime().dialect_impl(engine.dialect).bind_processor(engine.dialect)
        self._stamp: Callable[[datetime], Any] = bind if bind is not None else (lambda value: value)
        self._decode = _decoder(API_COLUMNS, self.sqlite)
        self._rows = _PointQuery(self, API_COLUMNS)
        self._keys = _PointQuery(self, KEY_COLUMNS)
        # The point reads themselves, without a coroutine around each (GET /v1/customers/{id} is the hottest
        # request): ``get`` gives one customer's ``API_COLUMNS``, ``key`` its id, version and tier (its ETag);
        # either None when there is no such customer.
        self.get: Callable[[int], Awaitable[Row | None]] = self._rows.get
        self.key: Callable[[int], Awaitable[Row | None]] = self._keys.get
        self._local = threading.local()
        self._opened: list[Any] = []
        self._opened_lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _close_all, self._opened, self._opened_lock)

    def close(self) -> None:
        """Close the kept connections and the batching thread (also done when garbage collected)."""
        self._finalizer()
        self._rows.close()
        self._keys.close()

    def run(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """Execute on this thread's kept connection; all rows (which also ends SQLite's read transaction)."""
        local = self._local
        for attempt in (1, 2):
            cursor = getattr(local, "cursor", None)
            if cursor is None:
                cursor = self._connect().cursor()
                local.cursor = cursor
            try:
                cursor.execute(sql, params)
                rows: list[Any] = cursor.fetchall()
                return rows
            except self._dbapi_error as exc:
                conn = local.conn
                self._discard(conn)
                lost = self.engine.dialect.is_disconnect(exc, conn, None)  # type: ignore[arg-type]
                if attempt == 1 and lost:
                    continue
                raise DBAPIError.instance(sql, params, exc, self._dbapi_error, connection_invalidated=lost,
                                          dialect=self.engine.dialect) from exc
        raise AssertionError("unreachable")

    def _connect(self) -> Any:
        fairy = self.engine.raw_connection()
        conn: Any = fairy.driver_connection
        fairy.detach()  # ours for good: never back in the pool, where our autocommit setting would leak
        if self.sqlite:
            # Read the file through a memory map: no read() system call per page (measured ~15% faster per
            # point read under load). Only this read-only connection; SQLite handles the file growing.
            conn.execute(f"PRAGMA mmap_size={SQLITE_MMAP_SIZE}")
        else:
            conn.autocommit = True  # each read sees the latest commits; no transaction left open between reads
        self._local.conn = conn
        with self._opened_lock:
            self._opened.append(conn)
        return conn

    def _discard(self, conn: Any) -> None:
        self._local.conn = self._local.cursor = None
        with self._opened_lock:
            if conn in self._opened:
                self._opened.remove(conn)
        with contextlib.suppress(Exception):  # it is being thrown away; a failure to close changes nothing
            conn.close()

    # -- lists ----------------------------------------------------------------------------------------------

    def page(self, *, provider: str | None = None, state: str | None = None, tier: str | None = None,
             reference: str | None = None, provider_customer_id: str | None = None,
             pending_before: datetime | None = None, after: tuple[datetime, int] | None = None,
             limit: int = 50, sort: str = "updated", customer_type: str | None = None,
             changed_after: datetime | None = None) -> list[Row]:
        """Newest change first; ``after`` is the (updated_at, id) of the last row of the previous page. With
        ``sort="pending_since"``: pending customers only, the longest pending first, ``after`` their
        (pending_since, id). The same rows as ``queries.list_customers`` (their ``API_COLUMNS``). On a pooled
        connection, in the caller's thread."""
        mark = self._mark
        where: list[str] = []
        params: list[Any] = []
        index = "ix_customers_updated"
        if provider is not None:
            where.append(f"provider = {mark}")
            params.append(provider)
        # Pending customers, and the escalated tiers (only pending customers have one), come from the small
        # partial index; other states are found along the newest-first index (most customers are decided).
        # The literal matches the partial index's predicate (a bound value would not, on either database).
        by_age = sort == "pending_since"
        pending = (by_age or state == _PENDING or pending_before is not None
                   or (tier is not None and tier != "none"))
        if state is not None:
            where.append(f"state = {mark}")
            params.append(state)
        if pending:
            where.append(f"state = '{_PENDING}'")
            index = "ix_customers_state_pending_since" if by_age else "ix_customers_pending_updated"
        if pending_before is not None:
            where.append(f"pending_since <= {mark}")
            params.append(self._stamp(pending_before))
        if tier is not None:
            where.append(f"tier = {mark}")
            params.append(tier)
        if customer_type is not None:
            where.append(f"customer_type = {mark}")
            params.append(customer_type)
        if changed_after is not None:
            where.append(f"updated_at > {mark}")
            params.append(self._stamp(changed_after))
        if reference is not None:
            where.append(f"reference = {mark}")
            params.append(reference)
            index = "ix_customers_reference"
        if provider_customer_id is not None:
            where.append(f"provider_customer_id = {mark}")
            params.append(provider_customer_id)
            if provider is None:
                where.append(_ANY_PROVIDER)
            index = "uq_customers_provider_pcid"
        if after is not None:
            where.append(f"(pending_since, id) > ({mark}, {mark})" if by_age
                         else f"(updated_at, id) < ({mark}, {mark})")
            params += [self._stamp(after[0]), after[1]]
        order = "pending_since, id" if by_age else "updated_at DESC, id DESC"
        # Only constant text and bound parameters: the values never enter the SQL.
        sql = (f"SELECT {', '.join(API_COLUMNS)} FROM customers{f' INDEXED BY {index}' if self.sqlite else ''}"  # noqa: S608
               f"{' WHERE ' + ' AND '.join(where) if where else ''} "
               f"ORDER BY {order} LIMIT {int(limit)}")
        decode = self._decode
        return [decode(row) for row in self._pooled(sql, tuple(params))]

    def _pooled(self, sql: str, params: Sequence[Any]) -> Sequence[Any]:
        """All rows of one statement on a connection from the engine's pool, straight from the DBAPI cursor
        (SQLAlchemy's result layer costs more than the query for a page of 50). Errors as ``run``."""
        fairy = self.engine.raw_connection()
        try:
            cursor = fairy.cursor()
            try:
                cursor.execute(sql, params)
                return cursor.fetchall()
            finally:
                cursor.close()
        except self._dbapi_error as exc:
            lost = self.engine.dialect.is_disconnect(exc, fairy.dbapi_connection, None)  # type: ignore[arg-type]
            if lost:
                fairy.invalidate(exc)
            raise DBAPIError.instance(sql, params, exc, self._dbapi_error, connection_invalidated=lost,
                                      dialect=self.engine.dialect) from exc
        finally:
            fairy.close()  # back to the pool, which ends the transaction PostgreSQL opened


class _PointQuery:
    """``SELECT columns FROM customers`` by id, batched (``Batcher``): ``get`` one, ``fetch`` a batch."""

    def __init__(self, reads: CustomerReads, columns: Sequence[str]) -> None:
        self._reads = reads
        self._decode = _decoder(columns, reads.sqlite)
        listed = ", ".join(columns)  # column names are constants
        self._id_at = list(columns).index("id")
        if reads.sqlite:  # the batch as one JSON text (see the module's docstring)
            self._sql = (f"SELECT json_group_array(json_array({listed})) FROM customers "  # noqa: S608
                         "WHERE id IN (SELECT value FROM json_each(?))")
        else:
            self._sql = f"SELECT {listed} FROM customers WHERE id = ANY(%s)"  # noqa: S608
        self._batcher = Batcher(self.fetch)
        self.get: Callable[[int], Awaitable[Row | None]] = self._batcher.get

    def fetch(self, ids: Sequence[int]) -> dict[int, Row]:
        if not ids:
            return {}
        rows: Sequence[Sequence[Any]]
        if self._reads.sqlite:
            rows = orjson.loads(self._reads.run(self._sql, (orjson.dumps(list(ids)).decode(),))[0][0])
        else:
            rows = self._reads.run(self._sql, (list(ids),))
        decode, at = self._decode, self._id_at
        return {row[at]: decode(row) for row in rows}

    def close(self) -> None:
        self._batcher.close()


def _close_all(opened: list[Any], lock: threading.Lock) -> None:
    with lock:
        conns = list(opened)
        opened.clear()
    for conn in conns:
        with contextlib.suppress(Exception):  # closing at shutdown or collection; nothing more to do
            conn.close()
