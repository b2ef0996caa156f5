"""The change feed's storage: ids in commit order under concurrent writers (PostgreSQL), and pruning."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import text

from tests.conftest import BACKEND
from tracker.changes import RETENTION
from tracker.db import feed
from tracker.db.engine import write_transaction


def entry(n: int) -> dict[str, object]:
    return {"kind": "alert", "provider": "blaaiz", "customer_id": n, "alert_id": n, "action": "raised"}


@pytest.mark.skipif(BACKEND != "postgres", reason="SQLite has one writer at a time: its ids are in commit order")
def test_an_append_waits_for_the_one_before_to_commit(engine, clock) -> None:
    """Without the lock, the second transaction would take the next id and commit first: a stream that read it
    would resume after it and never see the first one's."""
    first = engine.connect()
    first_tx = first.begin()
    feed.append(first, [entry(1)], clock.now())
    done = threading.Event()

    def second() -> None:
        with write_transaction(engine) as conn:
            feed.append(conn, [entry(2)], clock.now())
        done.set()

    thread = threading.Thread(target=second)
    thread.start()
    with engine.connect() as watcher:  # until the second append waits on the first's lock
        deadline = time.monotonic() + 10
        while not watcher.execute(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
                                  ).scalar_one():
            assert time.monotonic() < deadline, "the second append did not wait"
            watcher.rollback()
        assert not done.is_set()
        assert watcher.execute(text("SELECT count(*) FROM changes")).scalar_one() == 0
    first_tx.commit()
    first.close()
    thread.join(10)
    assert done.is_set()
    with engine.connect() as conn:
        rows = feed.after(conn, 0, 10)
    assert [row.customer_id for row in rows] == [1, 2]  # ids in the order the transactions committed


def test_pruning_forgets_what_is_older_than_the_retention(engine, clock) -> None:
    with write_transaction(engine) as conn:
        feed.append(conn, [entry(1), entry(2)], clock.now())
    clock.advance(RETENTION + timedelta(hours=1))
    with write_transaction(engine) as conn:
        feed.append(conn, [entry(3)], clock.now())
    with write_transaction(engine) as conn:
        assert feed.prune(conn, clock.now() - RETENTION) == 2
    with engine.connect() as conn:
        assert [row.customer_id for row in feed.after(conn, 0, 10)] == [3]
        assert feed.last_id(conn) == 3
    with write_transaction(engine) as conn:
        assert feed.prune(conn, clock.now() + timedelta(days=1)) == 1  # all of it, and ids are never reused
        feed.append(conn, [entry(4)], clock.now())
    with engine.connect() as conn:
        assert feed.last_id(conn) == 4
