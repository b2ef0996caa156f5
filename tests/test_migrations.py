"""Alembic migrations reach exactly the models' schema, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect

from tests.conftest import BACKEND, create_pg_database, drop_pg_database, require_postgres
from tracker.db import inbox, migrate
from tracker.db.engine import check_engine, make_engine
from tracker.db.tables import metadata


@pytest.fixture
def empty_engine(tmp_path) -> Iterator[Engine]:
    if BACKEND == "postgres":
        require_postgres()
        url = create_pg_database("tracker_migrate")
        engine = make_engine(url)
        yield engine
        engine.dispose()
        drop_pg_database(url)
    else:
        engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
        yield engine
        engine.dispose()


def test_upgrade_empty_database_matches_models(empty_engine: Engine) -> None:
    migrate.upgrade(empty_engine)
    assert migrate.current_revision(empty_engine) == migrate.head_revision()
    with empty_engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        diff = compare_metadata(context, metadata)
    assert diff == []
    tables = set(inspect(empty_engine).get_table_names())
    assert {"customers", "inbound_events", "history", "uploads", "api_keys", "alembic_version"} <= tables


def test_upgrade_is_repeatable_and_downgrade_works(empty_engine: Engine) -> None:
    migrate.upgrade(empty_engine)
    migrate.upgrade(empty_engine)
    from alembic import command

    config = migrate.alembic_config(empty_engine.url.render_as_string(hide_password=False))
    with empty_engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
    assert "customers" not in inspect(empty_engine).get_table_names()


def test_0007_queues_only_what_is_left_to_apply(empty_engine: Engine) -> None:
    """Migration 0007: events stored before it were applied when stored, except errors (no processed_at), which
    the applier now takes; the PostgreSQL function of the old combined write goes. It downgrades again."""
    from alembic import command

    config = migrate.alembic_config(empty_engine.url.render_as_string(hide_password=False))
    with empty_engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0006")
        conn.exec_driver_sql(
            "INSERT INTO inbound_events (provider, fingerprint, body, received_at, processed_at, outcome) VALUES "
            "('blaaiz', 'a', '{}', '2026-01-05 09:00:00', '2026-01-05 09:00:00', 'accepted'), "
            "('blaaiz', 'b', '{}', '2026-01-05 09:00:00', NULL, 'error')")
    migrate.upgrade(empty_engine)
    now = datetime(2026, 1, 5, 10, tzinfo=UTC)
    with empty_engine.begin() as conn:
        assert [(row.fingerprint, row.attempts) for row in inbox.claim(conn, 10, now)] == [("b", 0)]
        if empty_engine.dialect.name == "postgresql":
            assert conn.exec_driver_sql("SELECT to_regproc('tracker_expect_rows')").scalar() is None
    with empty_engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0006")
    assert "retry_at" not in {c["name"] for c in inspect(empty_engine).get_columns("inbound_events")}


def test_sqlite_runs_in_wal_with_busy_timeout(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'wal.db'}")
    check_engine(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
    engine.dispose()
