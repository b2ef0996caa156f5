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
    assert "database at 0001" in result.stdout or "database at" in result.stdout


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

    from tracker.cli import _logging
    from tracker.settings import Settings

    scheduler_log = logging.getLogger("apscheduler")
    try:
        _logging(Settings.from_env({"TRACKER_LOG_LEVEL": level}))
        assert logging.getLevelName(scheduler_log.level) == expected  # NOTSET: as the root logger says
    finally:
        scheduler_log.setLevel(logging.NOTSET)


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
            if "polling" in line:
                break
        assert any("there is nothing to poll" in line for line in seen), seen
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
