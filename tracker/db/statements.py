"""What the named queries share: the dialect's INSERT (for ON CONFLICT), statements built once per dialect, and
the one lease claim (due polls, due deadlines, due notices)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, Table, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite


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


def unleased(until: Any, now: datetime) -> Any:
    return or_(until.is_(None), until < now)
