"""SQLModel tables. The Alembic migrations in ``tracker/db/migrations`` must produce exactly this schema
(a test compares them)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, ForeignKey, Index, Integer, LargeBinary, String, Table, Text, text
from sqlmodel import Field, SQLModel

from tracker.db.types import UTCDateTime
from tracker.domain.events import MAX_CUSTOMER_ID, MAX_EVENT_ID, MAX_EVENT_TYPE, MAX_STATUS

metadata = SQLModel.metadata
metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT on PostgreSQL, INTEGER (the rowid alias, so it autoincrements) on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def _ts(nullable: bool = True, index: bool = False) -> Column[datetime]:
    return Column(UTCDateTime(), nullable=nullable, index=index)


class Customer(SQLModel, table=True):
    __tablename__ = "customers"
    __table_args__ = (
        # Only the indexes the queries use: every stored change moves updated_at, and an UPDATE that changes no
        # indexed column can stay on its page (a HOT update on PostgreSQL, no index entries to write or vacuum).
        Index("uq_customers_provider_pcid", "provider", "provider_customer_id", unique=True),
        # The API's list (tracker.db.reads), newest change first; pending customers (and so the escalated
        # tiers) from a small partial index, with pending_since in it so pending_longer_than is checked there.
        Index("ix_customers_updated", "updated_at", "id"),
        Index("ix_customers_pending_updated", "updated_at", "id", "pending_since",
              sqlite_where=text("state = 'pending'"), postgresql_where=text("state = 'pending'")),
        Index("ix_customers_state_pending_since", "state", "pending_since"),
        Index("ix_customers_reference", "reference"),
        Index("ix_customers_due_poll", "provider", "next_poll_at"),
        # The escalation claim's order (deadline_at, id): PostgreSQL can scan it plainly up to the limit (it does
        # when it expects few rows due), marking dead row versions' entries as it goes, where a bitmap scan
        # revisits them all until a vacuum (0005).
        Index("ix_customers_deadline", "deadline_at", "id", sqlite_where=text("deadline_at IS NOT NULL"),
              postgresql_where=text("deadline_at IS NOT NULL")),
    )

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    provider: str = Field(sa_column=Column(String(32), nullable=False))
    provider_customer_id: str = Field(sa_column=Column(String(MAX_CUSTOMER_ID), nullable=False))
    customer_type: str = Field(sa_column=Column(String(16), nullable=False))
    reference: str | None = Field(default=None, sa_column=Column(String(128)))
    application_id: str | None = Field(default=None, sa_column=Column(String(128)))
    state: str = Field(sa_column=Column(String(32), nullable=False))
    provider_status: str | None = Field(default=None, sa_column=Column(String(MAX_STATUS)))
    tier: str = Field(default="none", sa_column=Column(String(16), nullable=False, server_default="none"))
    pending_since: datetime | None = Field(default=None, sa_column=_ts())
    decided_at: datetime | None = Field(default=None, sa_column=_ts())
    last_provider_time: datetime | None = Field(default=None, sa_column=_ts())
    rejection_reason: str | None = Field(default=None, sa_column=Column(Text))
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    rejections: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    version: int = Field(default=1, sa_column=Column(Integer, nullable=False, server_default="1"))
    discovered_by: str = Field(sa_column=Column(String(16), nullable=False))
    flags: str | None = Field(default=None, sa_column=Column(Text))  # JSON list of flag names
    created_at: datetime = Field(sa_column=_ts(nullable=False))
    updated_at: datetime = Field(sa_column=_ts(nullable=False))
    # Polling: due time, the claim (lease) of the worker polling it, consecutive failures.
    next_poll_at: datetime | None = Field(default=None, sa_column=_ts())
    poll_lease_until: datetime | None = Field(default=None, sa_column=_ts())
    poll_lease_owner: str | None = Field(default=None, sa_column=Column(String(64)))
    poll_failures: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    last_polled_at: datetime | None = Field(default=None, sa_column=_ts())
    last_poll_error: str | None = Field(default=None, sa_column=Column(Text))  # until a poll succeeds again
    last_signal_at: datetime | None = Field(default=None, sa_column=_ts())  # its last webhook or poll answer
    # Counts the writes to the row (each ``update_customers``): the ETag follows it, since polls and signals
    # change what the record shows without moving its version.
    touches: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    # Escalation: the next tier's due time while pending (deadlines are data), and its claim.
    deadline_at: datetime | None = Field(default=None, sa_column=_ts())
    deadline_tier: str | None = Field(default=None, sa_column=Column(String(16)))
    deadline_lease_until: datetime | None = Field(default=None, sa_column=_ts())
    deadline_lease_owner: str | None = Field(default=None, sa_column=Column(String(64)))


class ProviderState(SQLModel, table=True):
    """Shared by every worker: the provider's circuit breaker, its Retry-After hold, and the pacing cursor."""

    __tablename__ = "provider_state"

    provider: str = Field(sa_column=Column(String(32), primary_key=True))
    breaker_state: str = Field(default="closed", sa_column=Column(String(16), nullable=False,
                                                                  server_default="closed"))
    breaker_failures: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    breaker_open_until: datetime | None = Field(default=None, sa_column=_ts())
    breaker_opens: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    blocked_until: datetime | None = Field(default=None, sa_column=_ts())
    next_slot_at: datetime | None = Field(default=None, sa_column=_ts())
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    last_error_at: datetime | None = Field(default=None, sa_column=_ts())
    # To within ``provider_gate.SUCCESS_RESOLUTION`` and ``inbox.applier.HEARD_RESOLUTION``: every poll and
    # every webhook writing the one row all workers share would queue them all on its lock.
    last_success_at: datetime | None = Field(default=None, sa_column=_ts())  # the last poll answered
    last_webhook_at: datetime | None = Field(default=None, sa_column=_ts())  # the last webhook applied
    updated_at: datetime | None = Field(default=None, sa_column=_ts())


class Alert(SQLModel, table=True):
    """One alert: a tier crossed by one attempt of one customer, a conflict, an unknown status value, or a
    provider-level incident that folds many of them. ``key`` makes each at most once."""

    __tablename__ = "alerts"
    __table_args__ = (
        Index("uq_alerts_key", "key", unique=True),
        Index("ix_alerts_state", "state", "id"),
        Index("ix_alerts_customer", "customer_id", "state"),
        Index("ix_alerts_repeat", "next_repeat_at", sqlite_where=text("next_repeat_at IS NOT NULL"),
              postgresql_where=text("next_repeat_at IS NOT NULL")),
        Index("ix_alerts_provider_kind", "provider", "kind", "opened_at"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    key: str = Field(sa_column=Column(String(200), nullable=False))
    kind: str = Field(sa_column=Column(String(32), nullable=False))  # overdue critical conflict unknown_status incident
    provider: str = Field(sa_column=Column(String(32), nullable=False))
    customer_id: int | None = Field(default=None, sa_column=Column(BigId, ForeignKey("customers.id")))
    attempt: int | None = Field(default=None, sa_column=Column(Integer))
    state: str = Field(sa_column=Column(String(16), nullable=False))  # open acknowledged resolved
    title: str = Field(sa_column=Column(Text, nullable=False))
    detail: str | None = Field(default=None, sa_column=Column(Text))  # JSON
    incident_id: int | None = Field(default=None, sa_column=Column(BigId, ForeignKey("alerts.id")))
    opened_at: datetime = Field(sa_column=_ts(nullable=False))
    acknowledged_at: datetime | None = Field(default=None, sa_column=_ts())
    acknowledged_by: str | None = Field(default=None, sa_column=Column(String(128)))
    resolved_at: datetime | None = Field(default=None, sa_column=_ts())
    next_repeat_at: datetime | None = Field(default=None, sa_column=_ts())
    repeats: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))


class Notification(SQLModel, table=True):
    """The outbox: one row per (notice, channel), written in the transaction that caused it, then delivered."""

    __tablename__ = "notifications"
    __table_args__ = (
        Index("uq_notifications_key_channel", "key", "channel", unique=True),
        Index("ix_notifications_due", "channel", "next_attempt_at", sqlite_where=text("state = 'pending'"),
              postgresql_where=text("state = 'pending'")),
        Index("ix_notifications_alert", "alert_id"),
        # The dashboard's failed deliveries, newest first, however few among however many notifications.
        Index("ix_notifications_failed", "id", sqlite_where=text("state = 'failed'"),
              postgresql_where=text("state = 'failed'")),
    )

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    key: str = Field(sa_column=Column(String(200), nullable=False))  # the idempotency key, sent to receivers
    alert_id: int = Field(sa_column=Column(BigId, ForeignKey("alerts.id"), nullable=False))
    channel: str = Field(sa_column=Column(String(16), nullable=False))
    action: str = Field(sa_column=Column(String(16), nullable=False))  # trigger repeat resolve
    payload: str = Field(sa_column=Column(Text, nullable=False))  # JSON of the Notice
    state: str = Field(sa_column=Column(String(16), nullable=False))  # pending sent failed
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    next_attempt_at: datetime = Field(sa_column=_ts(nullable=False))
    lease_until: datetime | None = Field(default=None, sa_column=_ts())
    lease_owner: str | None = Field(default=None, sa_column=Column(String(64)))
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(sa_column=_ts(nullable=False))
    sent_at: datetime | None = Field(default=None, sa_column=_ts())


class InboundEvent(SQLModel, table=True):
    """The inbox: every authenticated delivery, stored before it is acknowledged."""

    __tablename__ = "inbound_events"
    __table_args__ = (
        # Only the first delivery holds the dedupe keys; later copies are stored with duplicate_of set.
        Index("uq_inbound_events_provider_event_id", "provider", "event_id", unique=True,
              sqlite_where=text("duplicate_of IS NULL AND event_id IS NOT NULL"),
              postgresql_where=text("duplicate_of IS NULL AND event_id IS NOT NULL")),
        Index("uq_inbound_events_provider_fingerprint", "provider", "fingerprint", unique=True,
              sqlite_where=text("duplicate_of IS NULL AND fingerprint IS NOT NULL"),
              postgresql_where=text("duplicate_of IS NULL AND fingerprint IS NOT NULL")),
        Index("ix_inbound_events_customer", "customer_id", "id"),
        Index("ix_inbound_events_unprocessed", "outcome", "id"),
        # The applier's queue: only the rows not applied yet, so it stays small however large the inbox grows.
        Index("ix_inbound_events_unapplied", "id", sqlite_where=text("processed_at IS NULL"),
              postgresql_where=text("processed_at IS NULL")),
    )

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    provider: str = Field(sa_column=Column(String(32), nullable=False))
    event_id: str | None = Field(default=None, sa_column=Column(String(MAX_EVENT_ID)))
    fingerprint: str | None = Field(default=None, sa_column=Column(String(64)))
    event_type: str | None = Field(default=None, sa_column=Column(String(MAX_EVENT_TYPE)))
    provider_customer_id: str | None = Field(default=None, sa_column=Column(String(MAX_CUSTOMER_ID)))
    customer_id: int | None = Field(default=None, sa_column=Column(BigId, ForeignKey("customers.id")))
    provider_status: str | None = Field(default=None, sa_column=Column(String(MAX_STATUS)))
    provider_time: datetime | None = Field(default=None, sa_column=_ts())
    headers: str | None = Field(default=None, sa_column=Column(Text))  # JSON of the headers we need
    body: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    received_at: datetime = Field(sa_column=_ts(nullable=False))
    processed_at: datetime | None = Field(default=None, sa_column=_ts())
    # received (stored, not applied yet) | ignored | rejected, then the applier's: applied | no_change | stale
    # | conflict | refused | error
    outcome: str = Field(sa_column=Column(String(16), nullable=False))
    reason: str | None = Field(default=None, sa_column=Column(Text))
    # The applier's tries; an error is tried again at retry_at, then left for `tracker replay`.
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    retry_at: datetime | None = Field(default=None, sa_column=_ts())
    duplicate_of: int | None = Field(default=None, sa_column=Column(BigId, ForeignKey("inbound_events.id")))


class HistoryRow(SQLModel, table=True):
    """Append-only: one row per change of a customer's state."""

    __tablename__ = "history"
    __table_args__ = (Index("ix_history_customer", "customer_id", "id"),)

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    customer_id: int = Field(sa_column=Column(BigId, ForeignKey("customers.id"), nullable=False))
    from_state: str | None = Field(default=None, sa_column=Column(String(32)))
    to_state: str = Field(sa_column=Column(String(32), nullable=False))
    trigger: str = Field(sa_column=Column(String(32), nullable=False))
    source: str = Field(sa_column=Column(String(16), nullable=False))
    event_id: int | None = Field(default=None, sa_column=Column(BigId, ForeignKey("inbound_events.id")))
    provider_status: str | None = Field(default=None, sa_column=Column(String(MAX_STATUS)))
    provider_time: datetime | None = Field(default=None, sa_column=_ts())
    recorded_at: datetime = Field(sa_column=_ts(nullable=False))
    actor: str | None = Field(default=None, sa_column=Column(String(128)))
    comment: str | None = Field(default=None, sa_column=Column(Text))
    version: int = Field(sa_column=Column(Integer, nullable=False))


class Change(SQLModel, table=True):
    """The change feed (GET /v1/stream): one row per transition and alert change, ids in commit order (on
    PostgreSQL appends take a transaction lock, ``tracker.db.feed``), never reused (AUTOINCREMENT on SQLite), so
    a reader that resumes after an id misses nothing."""

    __tablename__ = "changes"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    at: datetime = Field(sa_column=_ts(nullable=False))
    kind: str = Field(sa_column=Column(String(16), nullable=False))  # transition | alert
    provider: str = Field(sa_column=Column(String(32), nullable=False))
    customer_id: int | None = Field(default=None, sa_column=Column(BigId))
    body: str = Field(sa_column=Column(Text, nullable=False))  # the rest of the notice, JSON


class Upload(SQLModel, table=True):
    """Uploads the client reported; they may start review, and are checked against the provider's rules."""

    __tablename__ = "uploads"
    __table_args__ = (Index("ix_uploads_customer", "customer_id", "id"),)

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    customer_id: int = Field(sa_column=Column(BigId, ForeignKey("customers.id"), nullable=False))
    slot: str = Field(sa_column=Column(String(64), nullable=False))
    file_id: str | None = Field(default=None, sa_column=Column(String(128)))
    document_type: str | None = Field(default=None, sa_column=Column(String(64)))
    flag: str | None = Field(default=None, sa_column=Column(String(64)))
    reported_at: datetime = Field(sa_column=_ts(nullable=False))


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"
    __table_args__ = (
        Index("uq_api_keys_prefix", "prefix", unique=True),
        # A name says which client holds a key: two live keys of one name could not be told apart (or revoked
        # one at a time). A revoked key's name may be used again.
        Index("uq_api_keys_live_name", "name", unique=True, sqlite_where=text("revoked_at IS NULL"),
              postgresql_where=text("revoked_at IS NULL")),
    )

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    name: str = Field(sa_column=Column(String(128), nullable=False))
    prefix: str = Field(sa_column=Column(String(32), nullable=False))
    key_hash: str = Field(sa_column=Column(String(64), nullable=False))
    scope: str = Field(sa_column=Column(String(16), nullable=False))
    created_at: datetime = Field(sa_column=_ts(nullable=False))
    revoked_at: datetime | None = Field(default=None, sa_column=_ts())
    last_used_at: datetime | None = Field(default=None, sa_column=_ts())  # when a lookup last verified it


customers: Table = Customer.__table__  # type: ignore[attr-defined]
inbound_events: Table = InboundEvent.__table__  # type: ignore[attr-defined]
history: Table = HistoryRow.__table__  # type: ignore[attr-defined]
uploads: Table = Upload.__table__  # type: ignore[attr-defined]
api_keys: Table = ApiKey.__table__  # type: ignore[attr-defined]
provider_state: Table = ProviderState.__table__  # type: ignore[attr-defined]
alerts: Table = Alert.__table__  # type: ignore[attr-defined]
notifications: Table = Notification.__table__  # type: ignore[attr-defined]
changes: Table = Change.__table__  # type: ignore[attr-defined]
