"""The tracker command: db upgrade, keys create, replay, worker."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import blaaiz_event, post_blaaiz
from tracker.apikeys import ApiKeys
from tracker.clock import SystemClock
from tracker.db.engine import make_engine
from tracker.db.tables import inbound_events


def run(args: list[str], database_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "TRACKER_DATABASE_URL": database_url, **env}
    return subprocess.run([sys.executable, "-m", "tracker.cli", *args], capture_output=True, text=True,
                          env=environment, timeout=120)


def test_db_upgrade_is_idempotent(database_url: str) -> None:
    result = run(["db", "upgrade"], database_url)
    assert result.returncode == 0, result.stderr
    from tracker.db import migrate

    assert f"database at {migrate.head_revision()}" in result.stdout


def test_keys_create_prints_key_alone_on_last_line(database_url: str) -> None:
    result = run(["keys", "create", "--name", "dashboard", "--scope", "read"], database_url)
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip().splitlines()[-1]
    assert key.startswith("trk_")
    assert " " not in key
    engine = make_engine(database_url)
    principal = ApiKeys(engine, SystemClock()).authenticate(key)
    engine.dispose()
    assert principal is not None
    assert (principal.name, principal.scope) == ("dashboard", "read")


def test_keys_create_refuses_unknown_scope(database_url: str) -> None:
    result = run(["keys", "create", "--name", "x", "--scope", "root"], database_url)
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


@pytest.mark.parametrize(("level", "expected"), [("info", "WARNING"), ("warning", "WARNING"), ("debug", "NOTSET")])
def test_the_ticker_does_not_log_every_tick(level: str, expected: str) -> None:
    # APScheduler logs two INFO lines per job per tick; the tracker ticks three jobs a second.
    import logging

    from tracker.cli.common import start_logging
    from tracker.settings import Settings

    scheduler_log, root = logging.getLogger("apscheduler"), logging.getLogger()
    handlers, root_level = list(root.handlers), root.level
    try:
        start_logging(Settings.from_env({"TRACKER_LOG_LEVEL": level}))
        assert logging.getLevelName(scheduler_log.level) == expected  # NOTSET: as the root logger says
    finally:
        scheduler_log.setLevel(logging.NOTSET)
        root.handlers[:] = handlers
        root.setLevel(root_level)


def test_worker_runs_until_sigterm(database_url: str) -> None:
    import signal

    env = {**os.environ, "TRACKER_DATABASE_URL": database_url, "TRACKER_LOG_LEVEL": "info"}
    process = subprocess.Popen([sys.executable, "-m", "tracker.cli", "worker"], env=env, stderr=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        seen = []
        for line in process.stderr:
            seen.append(line)
            if line.split(": ", 1)[-1].startswith("worker "):  # "worker <owner> polling ...": it runs
                break
        assert any("there is nothing to poll" in line for line in seen), seen
        assert any("alerts to log; worker" in line for line in seen), seen  # the start-up line
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()


async def test_failed_processing_is_stored_and_replayable(client, clock, engine, database_url, monkeypatch) -> None:
    """A bug while applying an event must not lose it: it is stored as ``error`` (no processed_at, a retry
    planned) and `tracker replay` runs it again through the fixed code."""
    import tracker.transitions.plans

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(tracker.transitions.plans, "decide", broken)
    response = await post_blaaiz(client, clock, blaaiz_event("cus_1", "PROCESSING", event_id="evt_err"))
    assert response.status_code == 200
    with engine.connect() as conn:
        row = conn.execute(select(inbound_events)).one()
    assert (row.outcome, row.processed_at, row.attempts) == ("error", None, 1)
    assert row.retry_at == clock.now() + timedelta(seconds=2)
    assert "simulated bug" in row.reason
    monkeypatch.undo()

    result = run(["replay", "--progress"], database_url)
    assert result.returncode == 0, result.stderr
    assert "replayed 1 event(s): 1 applied" in result.stdout
    assert "1/1" in result.stderr
    with engine.connect() as conn:
        row = conn.execute(select(inbound_events)).one()
    assert row.outcome == "applied"
    assert row.processed_at is not None
    again = run(["replay"], database_url)
    assert "nothing to replay" in again.stdout


@pytest.mark.parametrize("args", [["replay", "--all"]])
async def test_replay_all_is_harmless(client, clock, database_url, args: list[str]) -> None:
    await post_blaaiz(client, clock, blaaiz_event("cus_1", "PROCESSING", event_id="e1"))
    await post_blaaiz(client, clock, blaaiz_event("cus_1", "VERIFIED", event_id="e2",
                                                   updated_at="2026-01-05T09:40:00Z"))
    result = run(args, database_url)
    assert result.returncode == 0, result.stderr
    assert "replayed 2 event(s)" in result.stdout
    assert "applied" not in result.stdout.split(":", 1)[1]  # everything already applied: nothing moves twice


async def test_replay_keeps_the_first_outcome_of_applied_events(client, clock, engine, database_url) -> None:
    await post_blaaiz(client, clock, blaaiz_event("cus_1", "PROCESSING", event_id="e1"))
    run(["replay", "--all"], database_url)
    with engine.connect() as conn:
        assert conn.execute(select(inbound_events.c.outcome)).scalar_one() == "applied"


def test_version() -> None:
    result = subprocess.run([sys.executable, "-m", "tracker.cli", "--version"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    assert result.stdout.startswith("tracker ")


@pytest.mark.parametrize(("args", "message"), [
    (["serve", "--port", "99999"], "--port: 99999 is not between 1 and 65535"),
    (["serve", "--port", "http"], "--port: 'http' is not a whole number"),
    (["alerts", "list", "--limit", "-5"], "--limit: -5 is not between 1 and 500"),
    (["alerts", "ack", "99999999999999999999"], "is not between 1 and 9223372036854775807"),
    (["customers", "set-state", "1", "approved", "--reason", "x", "--by", "me"], "invalid choice: 'approved'"),
])
def test_bad_options_are_refused_with_the_reason(database_url: str, args: list[str], message: str) -> None:
    result = run(args, database_url)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_commands_on_a_fresh_sqlite_file_prepare_its_schema(tmp_path) -> None:
    """SQLite is migrated by the command, as by serve: a key made on a new file works, no empty file is left."""
    url = f"sqlite:///{tmp_path / 'new.db'}"
    created = run(["keys", "create", "--name", "first", "--scope", "admin"], url)
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip().splitlines()[-1].startswith("trk_")
    listed = run(["alerts", "list"], url)
    assert listed.returncode == 0, listed.stderr


def test_commands_on_a_postgresql_database_without_the_schema_say_to_upgrade() -> None:
    from tests.conftest import create_pg_database, drop_pg_database, require_postgres

    require_postgres()
    url = create_pg_database("tracker_noschema")
    try:
        for args in (["keys", "create", "--name", "x", "--scope", "read"], ["alerts", "list"], ["keys", "list"],
                     ["customers", "set-state", "1", "verified", "--reason", "x", "--by", "me"]):
            result = run(args, url)
            assert result.returncode == 1, (args, result.stderr)
            assert "run `tracker db upgrade` first" in result.stderr
            assert "Traceback" not in result.stderr
            assert "has schema none (no tracker tables)" in result.stderr
        upgraded = run(["db", "upgrade"], url)  # the fix the message names works on that same database
        assert upgraded.returncode == 0, upgraded.stderr
        created = run(["keys", "create", "--name", "x", "--scope", "read"], url)
        assert created.returncode == 0, created.stderr
    finally:
        drop_pg_database(url)


def test_commands_started_together_on_a_fresh_sqlite_file_all_succeed(tmp_path) -> None:
    """Each prepares the schema first (as serve does): the first migrates, the others wait for its write lock
    and find the schema at head, instead of failing with "database is locked"."""
    url = f"sqlite:///{tmp_path / 'race.db'}"
    env = {**os.environ, "TRACKER_DATABASE_URL": url}
    processes = [subprocess.Popen([sys.executable, "-m", "tracker.cli", "keys", "create", "--name", f"k{n}",
                                   "--scope", "read"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for n in range(4)]
    results = [(process.wait(timeout=120), process.stderr.read() if process.stderr else "") for process in processes]
    assert [code for code, _ in results] == [0, 0, 0, 0], results
