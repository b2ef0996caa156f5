"""Named queries. Each takes an open connection inside the caller's transaction; none commits."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, RowMapping, and_, func, or_, select, tuple_, update

from tracker.db.statements import claim_leased, dialect_insert, equal_to, unleased, update_by_key
from tracker.db.tables import (
    api_keys,
    customers,
    history,
    inbound_events,
    provider_state,
    uploads,
)
from tracker.domain.lifecycle import State

# --- customers -----------------------------------------------------------------------------------------

def lock_customers(conn: Connection, provider: str, provider_customer_ids: Iterable[str],
                   columns: Sequence[str] | None = None) -> dict[str, Row[Any]]:
    """Customers by provider id (``columns`` of them, by default all), locked for update on PostgreSQL (SQLite
    holds the write lock already)."""
    ids = sorted(set(provider_customer_ids))
    if not ids:
        return {}
    wanted = [customers.c[name] for name in columns] if columns else [customers]
    query = select(*wanted).where(customers.c.provider == provider,
                                  customers.c.provider_customer_id.in_(ids)).order_by(customers.c.id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return {row.provider_customer_id: row for row in conn.execute(query)}


def lock_customer(conn: Connection, customer_id: int) -> Row[Any] | None:
    query = select(customers).where(customers.c.id == customer_id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return conn.execute(query).first()


def insert_customers(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert customers unless (provider, provider_customer_id) exists already (a concurrent insert wins)."""
    if rows:
        stmt = dialect_insert(conn, customers).on_conflict_do_nothing(
            index_elements=[customers.c.provider, customers.c.provider_customer_id]
        )
        conn.execute(stmt, list(rows))


def insert_customer(conn: Connection, values: Mapping[str, Any]) -> bool:
    """Insert one customer unless it exists; returns whether it was inserted."""
    stmt = dialect_insert(conn, customers).on_conflict_do_nothing(
        index_elements=[customers.c.provider, customers.c.provider_customer_id]
    )
    return conn.execute(stmt.values(**values).returning(customers.c.id)).first() is not None


def update_customers(conn: Connection, changes: Sequence[dict[str, Any]]) -> int:
    """Apply changes (each with ``_id`` and ``_version``: only where the row still has that version); returns
    how many rows matched. The customers that changed the same columns go in one statement. Each write counts
    one more ``touches`` (the ETag's)."""
    total = 0
    by_shape: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for change in changes:
        by_shape.setdefault(tuple(sorted(name for name in change if not name.startswith("_"))), []).append(change)
    for shape, group in by_shape.items():
        total += update_by_key(conn, customers, shape, ("id", "version"), group, count="touches")
    return total


def get_customer(conn: Connection, customer_id: int) -> Row[Any] | None:
    return conn.execute(select(customers).where(customers.c.id == customer_id)).first()


def list_customers(conn: Connection, *, provider: str | None = None, state: str | None = None,
                   tier: str | None = None, reference: str | None = None,
                   provider_customer_id: str | None = None, pending_before: datetime | None = None,
                   after: tuple[datetime, int] | None = None, limit: int = 50, sort: str = "updated",
                   customer_type: str | None = None, changed_after: datetime | None = None) -> list[Row[Any]]:
    """Newest change first; ``after`` is the (updated_at, id) of the last row of the previous page. With
    ``sort="pending_since"``: pending customers only, the longest pending first, paged by (pending_since, id)."""
    query = equal_to(select(customers), customers, provider=provider, state=state, tier=tier, reference=reference,
                     provider_customer_id=provider_customer_id, customer_type=customer_type)
    if changed_after is not None:
        query = query.where(customers.c.updated_at > changed_after)
    if pending_before is not None:
        query = query.where(customers.c.state == State.PENDING.value, customers.c.pending_since <= pending_before)
    if sort == "pending_since":
        query = query.where(customers.c.state == State.PENDING.value)
        if after is not None:
            query = query.where(tuple_(customers.c.pending_since, customers.c.id) > tuple_(*after))
        return list(conn.execute(query.order_by(customers.c.pending_since, customers.c.id).limit(limit)))
    if after is not None:
        query = query.where(tuple_(customers.c.updated_at, customers.c.id) < tuple_(*after))
    query = query.order_by(customers.c.updated_at.desc(), customers.c.id.desc()).limit(limit)
    return list(conn.execute(query))


def count_customers_by_state(conn: Connection) -> list[Row[Any]]:
    return list(conn.execute(
        select(customers.c.provider, customers.c.state, customers.c.tier, func.count().label("n"))
        .group_by(customers.c.provider, customers.c.state, customers.c.tier)
    ))


def oldest_pending(conn: Connection, providers: Iterable[str]) -> list[Row[Any]]:
    """Per provider, its longest pending customer (id, provider, provider_customer_id, pending_since)."""
    found: list[Any] = []
    for provider in providers:  # each along the (state, pending_since) index, to its first row at the provider
        row = conn.execute(
            select(customers.c.id, customers.c.provider, customers.c.provider_customer_id,
                   customers.c.pending_since)
            .where(customers.c.state == State.PENDING.value, customers.c.provider == provider)
            .order_by(customers.c.pending_since, customers.c.id).limit(1)
        ).first()
        if row is not None:
            found.append(row)
    return found


# --- history and uploads -------------------------------------------------------------------------------

def insert_history(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        conn.execute(history.insert(), list(rows))


def customer_history(conn: Connection, customer_id: int) -> list[Row[Any]]:
    return list(conn.execute(select(history).where(history.c.customer_id == customer_id).order_by(history.c.id)))


def customer_events(conn: Connection, customer_id: int, limit: int = 200) -> list[Row[Any]]:
    cols = [c for c in inbound_events.c if c.name != "body"]
    return list(conn.execute(
        select(*cols).where(inbound_events.c.customer_id == customer_id).order_by(inbound_events.c.id.desc())
        .limit(limit)
    ))


def insert_upload(conn: Connection, values: Mapping[str, Any]) -> None:
    conn.execute(uploads.insert().values(**values))


def customer_uploads(conn: Connection, customer_id: int) -> list[Row[Any]]:
    return list(conn.execute(select(uploads).where(uploads.c.customer_id == customer_id).order_by(uploads.c.id)))


def flags_of(row: Mapping[str, Any] | RowMapping) -> list[str]:
    raw = row.get("flags")
    return list(json.loads(raw)) if raw else []


# --- api keys ------------------------------------------------------------------------------------------

def insert_api_key(conn: Connection, values: Mapping[str, Any]) -> None:
    conn.execute(api_keys.insert().values(**values))


def api_key_by_prefix(conn: Connection, prefix: str) -> Row[Any] | None:
    return conn.execute(
        select(api_keys).where(api_keys.c.prefix == prefix, api_keys.c.revoked_at.is_(None))
    ).first()


def live_api_key_named(conn: Connection, name: str) -> Row[Any] | None:
    return conn.execute(select(api_keys).where(api_keys.c.name == name, api_keys.c.revoked_at.is_(None))).first()


def api_keys_listed(conn: Connection, *, revoked: bool) -> list[Row[Any]]:
    """Keys without their hash, oldest first; revoked ones too when ``revoked``."""
    query = select(*(c for c in api_keys.c if c.name != "key_hash")).order_by(api_keys.c.id)
    if not revoked:
        query = query.where(api_keys.c.revoked_at.is_(None))
    return list(conn.execute(query))


def set_api_key(conn: Connection, key_id: int, **values: Any) -> None:
    conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(**values))


def events_to_replay(conn: Connection, *, provider: str | None, outcomes: Sequence[str] | None,
                     after_id: int, limit: int) -> list[int]:
    query = select(inbound_events.c.id).where(inbound_events.c.id > after_id)
    if provider:
        query = query.where(inbound_events.c.provider == provider)
    if outcomes:
        query = query.where(inbound_events.c.outcome.in_(list(outcomes)))
    query = query.where(and_(inbound_events.c.duplicate_of.is_(None)))
    return [row.id for row in conn.execute(query.order_by(inbound_events.c.id).limit(limit))]


def count_events_to_replay(conn: Connection, *, provider: str | None, outcomes: Sequence[str] | None) -> int:
    query = select(func.count()).select_from(inbound_events).where(inbound_events.c.duplicate_of.is_(None))
    if provider:
        query = query.where(inbound_events.c.provider == provider)
    if outcomes:
        query = query.where(inbound_events.c.outcome.in_(list(outcomes)))
    return int(conn.execute(query).scalar_one())


# --- polling -------------------------------------------------------------------------------------------

def lock_provider_state(conn: Connection, provider: str) -> Row[Any]:
    """The provider's shared state row, created on first use, locked for this transaction."""
    _provider_state_row(conn, provider)
    query = select(provider_state).where(provider_state.c.provider == provider)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return conn.execute(query).one()


def provider_state_of(conn: Connection, provider: str) -> Row[Any] | None:
    """The provider's shared state row as it is, without a lock (None before its first use)."""
    return conn.execute(select(provider_state).where(provider_state.c.provider == provider)).first()


def update_provider_state(conn: Connection, provider: str, values: Mapping[str, Any]) -> None:
    conn.execute(update(provider_state).where(provider_state.c.provider == provider).values(**values))


def note_webhook(conn: Connection, provider: str, at: datetime) -> None:
    """The provider's last webhook arrived at ``at`` (kept if a later one is noted already)."""
    _provider_state_row(conn, provider)
    conn.execute(update(provider_state).where(
        provider_state.c.provider == provider,
        or_(provider_state.c.last_webhook_at.is_(None), provider_state.c.last_webhook_at < at),
    ).values(last_webhook_at=at))


def _provider_state_row(conn: Connection, provider: str) -> None:
    """Create the provider's shared state row unless it exists."""
    conn.execute(dialect_insert(conn, provider_state)
                 .on_conflict_do_nothing(index_elements=[provider_state.c.provider]),
                 {"provider": provider, "breaker_state": "closed", "breaker_failures": 0, "breaker_opens": 0})


def provider_states(conn: Connection) -> list[Row[Any]]:
    return list(conn.execute(select(provider_state).order_by(provider_state.c.provider)))


def claim_due(conn: Connection, provider: str, now: datetime, limit: int, owner: str, lease_until: datetime
              ) -> list[Row[Any]]:
    """Claim up to ``limit`` customers due for a poll, oldest due first."""
    return claim_leased(conn, customers,
                  [customers.c.provider == provider, customers.c.next_poll_at <= now,
                   unleased(customers.c.poll_lease_until, now)],
                  [customers.c.next_poll_at, customers.c.id], limit,
                  {"poll_lease_until": lease_until, "poll_lease_owner": owner})


def claim_customer(conn: Connection, customer_id: int, now: datetime, owner: str, lease_until: datetime
                   ) -> Row[Any] | None:
    """Claim one customer for a poll now, due or not, unless another poll holds it; the row, or None."""
    return conn.execute(
        update(customers).where(customers.c.id == customer_id, unleased(customers.c.poll_lease_until, now))
        .values(poll_lease_until=lease_until, poll_lease_owner=owner).returning(*customers.c)
    ).first()


def count_due(conn: Connection, provider: str, now: datetime) -> int:
    return int(conn.execute(
        select(func.count()).select_from(customers).where(customers.c.provider == provider,
                                                          customers.c.next_poll_at <= now)
    ).scalar_one())


DEADLINE_CLAIM_COLUMNS = ("id", "provider", "provider_customer_id", "customer_type", "application_id", "state",
                          "deadline_at")


def claim_deadlines(conn: Connection, now: datetime, limit: int, owner: str, lease_until: datetime
                    ) -> list[Row[Any]]:
    """Claim customers whose next escalation threshold is due: in proportion to what is due (indexed)."""
    return claim_leased(conn, customers,
                  [customers.c.deadline_at <= now, unleased(customers.c.deadline_lease_until, now)],
                  [customers.c.deadline_at, customers.c.id], limit,
                  {"deadline_lease_until": lease_until, "deadline_lease_owner": owner},
                  [customers.c[name] for name in DEADLINE_CLAIM_COLUMNS])
