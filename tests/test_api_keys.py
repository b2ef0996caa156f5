"""API keys as an operator manages them: names unique among live keys, listed without the key, revoked by name
(refused at once in the revoking process, and by others within TRACKER_API_KEY_CACHE_TTL), last use recorded."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, text

from tests.conftest import BACKEND, create_pg_database, drop_pg_database, require_postgres
from tests.test_cli import run
from tracker.apikeys import ApiKeys
from tracker.db import migrate
from tracker.db.engine import make_engine
from tracker.db.tables import api_keys
from tracker.errors import Conflict, NotFound


def test_names_are_unique_among_live_keys_and_free_again_once_revoked(container) -> None:
    keys = container.api_keys
    first = keys.create("dashboard", "read")
    with pytest.raises(Conflict, match="a key named 'dashboard' exists"):
        keys.create(" dashboard ", "write")
    keys.revoke("dashboard")
    second = keys.create("dashboard", "write")
    assert keys.authenticate(first) is None
    principal = keys.authenticate(second)
    assert principal is not None
    assert principal.scope == "write"
    listed = keys.listing(revoked=True)
    assert [(k.name, k.scope, k.revoked_at is not None) for k in listed] == [
        ("dashboard", "read", True), ("dashboard", "write", False)]
    assert [k.name for k in keys.listing()] == ["dashboard"]


def test_revoke_of_an_unknown_name_is_not_found(container) -> None:
    with pytest.raises(NotFound, match="no live key named 'ghost'"):
        container.api_keys.revoke("ghost")


def test_another_process_refuses_a_revoked_key_within_the_cache_ttl(container, clock) -> None:
    """Two ApiKeys over one database stand for two processes: the one that did not revoke keeps trusting its
    cached check until the cache time runs out, then looks again and refuses."""
    other = ApiKeys(container.engine, clock, timedelta(seconds=30))
    key = container.api_keys.create("ops", "admin")
    assert other.authenticate(key) is not None  # cached there now
    container.api_keys.revoke("ops")
    assert container.api_keys.authenticate(key) is None  # the revoking process: at once
    clock.advance(timedelta(seconds=29))
    assert other.authenticate(key) is not None
    clock.advance(timedelta(seconds=2))
    assert other.authenticate(key) is None


def test_last_use_is_recorded_when_a_key_is_verified(container, clock) -> None:
    key = container.api_keys.create("batch", "read")
    assert container.api_keys.listing()[0].last_used_at is None
    clock.advance(timedelta(minutes=3))
    assert container.api_keys.authenticate(key) is not None
    assert container.api_keys.listing()[0].last_used_at == clock.now()


def test_cli_lists_and_revokes_keys_without_showing_them(database_url: str) -> None:
    created = run(["keys", "create", "--name", "dashboard", "--scope", "read"], database_url)
    key = created.stdout.strip().splitlines()[-1]
    again = run(["keys", "create", "--name", "dashboard", "--scope", "read"], database_url)
    assert again.returncode == 1
    assert "a key named 'dashboard' exists" in again.stderr
    listed = run(["keys", "list"], database_url)
    assert listed.returncode == 0, listed.stderr
    assert "dashboard" in listed.stdout
    assert key not in listed.stdout
    assert key.split("_", 2)[2] not in listed.stdout  # the secret part, never
    revoked = run(["keys", "revoke", "dashboard"], database_url)
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked key 'dashboard'" in revoked.stdout
    assert "dashboard" not in run(["keys", "list"], database_url).stdout
    assert "dashboard" in run(["keys", "list", "--all"], database_url).stdout
    missing = run(["keys", "revoke", "dashboard"], database_url)
    assert missing.returncode == 1
    assert "no live key named 'dashboard'" in missing.stderr


def test_migration_0009_renames_live_duplicates_and_keeps_revoked_ones(tmp_path) -> None:
    if BACKEND == "postgres":
        require_postgres()
        url = create_pg_database("tracker_keys")
    else:
        url = f"sqlite:///{tmp_path / 'keys.db'}"
    engine = make_engine(url)
    try:
        migrate.upgrade(engine, "0008")
        with engine.begin() as conn:
            for n, (name, revoked) in enumerate([("ci", False), ("ci", False), ("ci", True), ("ops", False)]):
                conn.execute(text(
                    "INSERT INTO api_keys (name, prefix, key_hash, scope, created_at, revoked_at) "
                    "VALUES (:name, :prefix, 'h', 'read', :at, :revoked)"),
                    {"name": name, "prefix": f"p{n}", "at": "2026-01-05 09:00:00",
                     "revoked": "2026-01-05 10:00:00" if revoked else None})
        migrate.upgrade(engine)
        with engine.connect() as conn:
            rows = conn.execute(select(api_keys.c.id, api_keys.c.name, api_keys.c.revoked_at)
                                .order_by(api_keys.c.id)).all()
        assert [(row.name, row.revoked_at is not None) for row in rows] == [
            ("ci", False), (f"ci#{rows[1].id}", False), ("ci", True), ("ops", False)]
    finally:
        engine.dispose()
        if BACKEND == "postgres":
            drop_pg_database(url)
