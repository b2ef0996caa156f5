"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Table
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


def sqlite_text(value: datetime | None) -> str | None:
    """A time as ``UTCDateTime`` stores it on SQLite (naive UTC text with microseconds), for statements that
    bind values on the driver's cursor themselves (``tracker.db.inbox``)."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    return value.astimezone(UTC).isoformat(" ", "microseconds")[:26]


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes in, aware UTC datetimes out; naive UTC on SQLite, timestamptz on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def driver_values(dialect: str, times: frozenset[str], names: Sequence[str], row: Mapping[str, Any]) -> list[Any]:
    """``row``'s values for ``names``, as the driver takes them for statements bound on its own cursor: on
    SQLite the UTC time columns (``times``) as ``UTCDateTime`` stores them; psycopg takes aware datetimes."""
    if dialect != "sqlite":
        return [row[name] for name in names]
    return [sqlite_text(row[name]) if name in times else row[name] for name in names]


def time_columns(table: Table) -> frozenset[str]:
    return frozenset(c.name for c in table.columns if isinstance(c.type, UTCDateTime))
