"""Alembic migrations reach exactly the models' schema, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect

from tests.conftest import BACKEND, create_pg_database, drop_pg_database, require_postgres
from tracker.db import migrate
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


def test_postgres_gets_the_function_that_checks_a_batch_before_its_commit(empty_engine: Engine) -> None:
    """Migration 0006: tracker_expect_rows (the webhook writer's UPDATE calls it); gone again after a downgrade."""
    if empty_engine.dialect.name != "postgresql":
        pytest.skip("a PostgreSQL function")
    from alembic import command
    from psycopg import errors

    migrate.upgrade(empty_engine)
    with empty_engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT tracker_expect_rows(3, 3)").scalar() == 3
        with pytest.raises(Exception, match="expected to update 3 customer rows at the versions read, matched 2"
                           ) as refused:
            conn.exec_driver_sql("SELECT tracker_expect_rows(2, 3)")
        assert isinstance(refused.value.orig, errors.SerializationFailure)  # type: ignore[attr-defined]
    config = migrate.alembic_config(empty_engine.url.render_as_string(hide_password=False))
    with empty_engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0005")
    with empty_engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT to_regproc('tracker_expect_rows')").scalar() is None


def test_sqlite_runs_in_wal_with_busy_timeout(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'wal.db'}")
    check_engine(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
    engine.dispose()
