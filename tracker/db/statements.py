"""What the named queries share: the dialect's INSERT (for ON CONFLICT), statements built once per dialect, and
the one lease claim (due polls, due deadlines, due notices)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, Table, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from tracker.db.types import driver_values, time_columns


def dialect_insert(conn: Connection, table: Any) -> Any:
    return (postgresql.insert(table) if conn.dialect.name == "postgresql" else sqlite.insert(table))


_built: dict[tuple[str, str], Any] = {}


def built_once(conn: Connection, name: str, build: Callable[[Connection], Any]) -> Any:
    """A statement built once per dialect. SQLAlchemy memoizes a statement object's cache key, so executing
    the same object again skips rebuilding it and walking it for the key (which costs more than the
    execution itself for small statements such as an alert's insert)."""
    key = (conn.dialect.name, name)
    stmt = _built.get(key)
    if stmt is None:
        stmt = _built[key] = build(conn)
    return stmt


def claim_leased(conn: Connection, table: Table, due: Sequence[Any], order: Sequence[Any], limit: int,
           lease: Mapping[str, Any], columns: Sequence[Any] | None = None) -> list[Row[Any]]:
    """The one lease claim: pick up to ``limit`` due rows in ``order`` (``FOR UPDATE SKIP LOCKED`` on
    PostgreSQL; SQLite has one writer at a time), write the lease columns, return the rows (``columns``, by
    default all) in ``order``. One statement: an UPDATE of the picked ids, RETURNING the leased rows."""
    if limit <= 0:
        return []
    picked: Any = select(table.c.id).where(*due).order_by(*order).limit(limit)
    if conn.dialect.name == "postgresql":
        # Materialized, so the pick runs exactly once: a SKIP LOCKED subquery the planner inlined and rescanned
        # could pick (and lease) other rows on each pass.
        picked = picked.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
        picked = select(picked.c.id)
    returned = list(table.c) if columns is None else list(columns)
    names = {column.name for column in returned}
    returned += [column for column in order if column.name not in names]  # to sort by
    rows = list(conn.execute(update(table).where(table.c.id.in_(picked)).values(**lease).returning(*returned)))
    rows.sort(key=lambda row: tuple(row._mapping[column.name] for column in order))  # RETURNING has no order
    return rows


def equal_to(query: Any, table: Table, **filters: Any) -> Any:
    """``query`` narrowed to the rows whose columns equal the filters given (None: that filter is not given)."""
    for name, value in filters.items():
        if value is not None:
            query = query.where(table.c[name] == value)
    return query


def unleased(until: Any, now: datetime) -> Any:
    return or_(until.is_(None), until < now)


# (dialect, table, names, keys, counted column) -> the statement's text and the table's time columns: built once each
_bulk_texts: dict[tuple[str, str, tuple[str, ...], tuple[str, ...], str | None], tuple[str, frozenset[str]]] = {}
_PG = postgresql.dialect()  # type: ignore[no-untyped-call]


def update_by_key(conn: Connection, table: Table, names: Sequence[str], keys: Sequence[str],
                  rows: Sequence[Mapping[str, Any]], count: str | None = None) -> int:
    """``UPDATE table SET names... WHERE keys...`` for each of ``rows`` (``names`` by name; each key ``k`` as ``_k``;
    ``count``: an integer column each update adds one to); how many rows matched. PostgreSQL: one statement over
    arrays (``unnest``), so a batch of hundreds is one round trip and one plan on the server; SQLite: one
    ``executemany`` on the driver's cursor (no round trips to save). Runs for every stored event the applier
    records: no per-row statement building."""
    if not rows:
        return 0
    dialect = conn.dialect.name
    key = (dialect, table.name, tuple(names), tuple(keys), count)
    built = _bulk_texts.get(key)
    if built is None:
        built = _bulk_texts[key] = (_bulk_text(dialect, table, names, keys, count), time_columns(table))
    text, times = built
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        if dialect == "postgresql":
            # one array per column (``unnest`` spreads them back into rows)
            columns = [*names, *(f"_{k}" for k in keys)]
            cursor.execute(text, [[row[name] for row in rows] for name in columns])
        else:
            cursor.executemany(text, [[*driver_values(dialect, times, names, row), *(row[f"_{k}"] for k in keys)]
                                      for row in rows])
        return int(cursor.rowcount)
    finally:
        cursor.close()


def _bulk_text(dialect: str, table: Table, names: Sequence[str], keys: Sequence[str], count: str | None) -> str:
    counted = f", {count} = {table.name}.{count} + 1" if count else ""
    if dialect != "postgresql":
        sets = ", ".join(f"{name} = ?" for name in names) + counted
        return f"UPDATE {table.name} SET {sets} WHERE {' AND '.join(f'{k} = ?' for k in keys)}"  # noqa: S608
    columns = [*names, *keys]
    arrays = ", ".join(f"%s::{table.c[name].type.compile(dialect=_PG)}[]" for name in columns)
    aliases = ", ".join([*names, *(f"_{k}" for k in keys)])
    sets = ", ".join(f"{name} = v.{name}" for name in names) + counted
    where = " AND ".join(f"{table.name}.{k} = v._{k}" for k in keys)
    return (f"UPDATE {table.name} SET {sets} FROM unnest({arrays}) AS v({aliases}) WHERE {where}")  # noqa: S608
