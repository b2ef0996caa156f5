"""One group-commit batch, through the writer the server uses (tracker.ingest._Writer), without HTTP.

Every delivery of a batch gets its own inbox row; copies point at their original, moves at the inbox row that
caused them, whatever mix of providers, customers and copies the batch holds. On PostgreSQL the batch's writes
go in one round trip (psycopg's pipeline mode, inbox ids reserved by the prefetch), and BEGIN goes with the
prefetch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import blaaiz_event
from tracker.bootstrap import Container
from tracker.clock import FakeClock
from tracker.db.tables import alerts, customers, history, inbound_events, notifications
from tracker.errors import DatabaseUnavailable
from tracker.ingest import Delivery, IngestResult, _Writer
from tracker.providers import blaaiz, connectfi
from tracker.providers.simulators.connectfi import ConnectFiSimulator


@pytest.fixture
def writer(container: Container) -> Iterator[_Writer]:
    kept = _Writer(container.ingestor)
    yield kept
    kept.close()


def blaaiz_delivery(clock: FakeClock, pcid: str, status: str, **fields: Any) -> Delivery:
    payload = blaaiz_event(pcid, status, **fields)
    return Delivery("blaaiz", clock.now(), json.dumps(payload).encode(), {}, blaaiz.parse(payload))


def inbox(container: Container) -> dict[int, Any]:
    with container.engine.connect() as conn:
        return {row.id: row for row in conn.execute(select(inbound_events))}


def test_a_mixed_batch_stores_every_delivery_once_with_its_links(container: Container, clock: FakeClock,
                                                                 writer: _Writer) -> None:
    """Two providers, a copy of a delivery in the same batch, a customer never seen, a body that cannot be read,
    moves: each delivery has its own inbox row, the copy points at its original, each history row at the
    delivery that moved the customer."""
    writer.ingest([blaaiz_delivery(clock, f"cus_{n}", "PROCESSING") for n in range(3)])
    sim = ConnectFiSimulator(clock=clock)
    sim.add_application("app_1", "cf_cust_1", "waiting_review")
    callback = sim.callback("app_1")
    verified = blaaiz_delivery(clock, "cus_0", "VERIFIED", event_id="evt_verified_0")
    batch = [
        verified,
        blaaiz_delivery(clock, "cus_1", "REJECTED", comment="Cropped document"),
        Delivery("connectfi", clock.now(), callback, {}, connectfi.parse(json.loads(callback))),
        blaaiz_delivery(clock, "cus_0", "VERIFIED", event_id="evt_verified_0"),  # a copy, in the same batch
        blaaiz_delivery(clock, "cus_new", "PROCESSING"),  # never registered: discovered
        Delivery("blaaiz", clock.now(), b"{nope", {}, None, "the body is not valid JSON"),
        blaaiz_delivery(clock, "cus_2", "VERIFIED"),
    ]
    before = set(inbox(container))
    results: list[IngestResult] = writer.ingest(batch)

    assert [r.outcome for r in results] == ["accepted", "accepted", "accepted", "duplicate", "accepted",
                                            "rejected", "accepted"]
    ids = [r.event_id for r in results]
    rows = inbox(container)
    assert len(set(ids)) == len(batch)
    assert set(rows) - before == set(ids)
    assert [rows[i].provider for i in ids] == ["blaaiz", "blaaiz", "connectfi", "blaaiz", "blaaiz", "blaaiz",
                                               "blaaiz"]
    assert rows[ids[3]].duplicate_of == ids[0]
    assert rows[ids[0]].duplicate_of is None
    assert rows[ids[5]].outcome == "rejected"
    with container.engine.connect() as conn:
        state = dict(conn.execute(select(customers.c.provider_customer_id, customers.c.state)).all())
        moves = conn.execute(select(history.c.customer_id, history.c.event_id, history.c.to_state)
                             .where(history.c.event_id.in_(ids))).all()
    assert (state["cus_0"], state["cus_1"], state["cf_cust_1"], state["cus_new"], state["cus_2"]) == (
        "verified", "rejected", "pending", "pending", "verified")
    assert sorted((event_id, to_state) for _, event_id, to_state in moves) == sorted([
        (ids[0], "verified"), (ids[1], "rejected"), (ids[2], "pending"), (ids[4], "pending"),
        (ids[6], "verified")])
    for customer_id, event_id, _ in moves:
        assert rows[event_id].customer_id == customer_id
    later = writer.ingest([blaaiz_delivery(clock, "cus_1", "PROCESSING")])
    assert later[0].event_id > max(ids)  # the next batch's ids come after


def waits(trace: str) -> int:
    """How often the client waited for the server, from libpq's trace of what it sent: each Sync (the end of a
    pipeline or of a statement), each simple query, each Flush that asks for a result in a pipeline."""
    sent = [line.split("\t")[2].split(" ")[0] for line in trace.splitlines() if line.split("\t")[0] == "F"]
    return sum(1 for n, kind in enumerate(sent)
               if kind in ("Sync", "Query") or (kind == "Flush" and (n == 0 or sent[n - 1] != "Sync")))


def traced(writer: _Writer, batch: list[Delivery]) -> tuple[list[IngestResult], str]:
    """``writer.ingest(batch)`` on PostgreSQL, with libpq's trace of it."""
    from psycopg import pq

    assert writer._conn is not None
    pgconn = writer._conn.connection.dbapi_connection.pgconn  # type: ignore[union-attr]
    with tempfile.TemporaryFile("w+") as trace:
        pgconn.trace(trace.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            results = writer.ingest(batch)
        finally:
            pgconn.untrace()
        trace.seek(0)
        return results, trace.read()


def test_a_postgres_batch_waits_for_the_server_twice_whatever_its_size(container: Container, clock: FakeClock,
                                                                       writer: _Writer) -> None:
    """BEGIN with the prefetch (which reserves the inbox ids), then every write and COMMIT at once. Without the
    pipeline BEGIN and each write (customers, inbox with RETURNING, history) waited for its own answer (six
    waits); with it but psycopg's own BEGIN, four; with COMMIT on its own after the writes, three."""
    if container.engine.dialect.name != "postgresql":
        pytest.skip("psycopg's pipeline mode")
    for size in (1, 12):
        pcids = [f"cus_{size}_{n}" for n in range(size)]
        writer.ingest([blaaiz_delivery(clock, pcid, "PROCESSING") for pcid in pcids])  # known, pending
        assert writer._conn is not None
        results, text = traced(writer, [blaaiz_delivery(clock, pcid, "VERIFIED") for pcid in pcids])
        assert [r.outcome for r in results] == ["accepted"] * size
        assert waits(text) == 2, text
        sent_commits = [line for line in text.splitlines() if line.startswith("F") and '"COMMIT"' in line]
        assert len(sent_commits) == 1, text  # the batch's: SQLAlchemy's commit finds nothing left to commit
        with container.engine.connect() as conn:
            assert conn.execute(select(history.c.event_id).where(history.c.to_state == "verified",
                                                                  history.c.event_id.in_([r.event_id for r in results]))
                                ).scalars().all()


def test_a_postgres_batch_that_raises_alerts_waits_three_times(container: Container, clock: FakeClock,
                                                                 writer: _Writer) -> None:
    """Contradictions of verified customers: the conflict alerts go with the batch's writes (their ids read
    once it has synced), their notices with COMMIT. Through SQLAlchemy, after the pipeline, the alerts and then
    their notices each waited for the server: five waits."""
    if container.engine.dialect.name != "postgresql":
        pytest.skip("psycopg's pipeline mode")
    pcids = [f"cus_c{n}" for n in range(4)]
    writer.ingest([blaaiz_delivery(clock, pcid, "VERIFIED") for pcid in pcids])
    batch = [blaaiz_delivery(clock, pcid, "REJECTED") for pcid in pcids[:3]]
    batch.append(blaaiz_delivery(clock, pcids[3], "VERIFIED", updated_at="2026-01-06T00:00:00Z"))  # re-sent

    results, text = traced(writer, batch)

    assert [r.outcome for r in results] == ["conflict"] * 3 + ["ignored"]
    assert waits(text) == 3, text
    with container.engine.connect() as conn:
        raised = conn.execute(select(alerts.c.id, alerts.c.customer_id, alerts.c.kind)).all()
        notices = conn.execute(select(notifications.c.alert_id, notifications.c.key, notifications.c.payload)).all()
    assert sorted(customer for _, customer, _ in raised) == sorted(r.customer_id for r in results[:3])
    assert {kind for _, _, kind in raised} == {"conflict"}
    channels = container.effects.alerts.channels
    assert len(notices) == 3 * len(channels)
    for alert_id, key, payload in notices:
        assert key == f"alert:{alert_id}:trigger"
        assert json.loads(payload)["alert_id"] == alert_id


def test_a_batch_of_many_contradictions_alerts_each_once_with_notices_only_for_new_alerts(
        container: Container, clock: FakeClock, writer: _Writer) -> None:
    """70 contradictions in one batch (two statements' worth of alerts, 64 rows each at most), one of them with
    an alert of its key already open: 69 new alerts, each with its notices, and none again for the one."""
    pcids = [f"cus_m{n}" for n in range(70)]
    writer.ingest([blaaiz_delivery(clock, pcid, "VERIFIED") for pcid in pcids])
    batch = [blaaiz_delivery(clock, pcid, "REJECTED", event_id=f"evt_rej_{pcid}") for pcid in pcids]
    with container.engine.begin() as conn:
        first = conn.execute(select(customers.c.id).where(customers.c.provider_customer_id == pcids[0])).scalar()
        existing = conn.execute(alerts.insert().values(
            key=f"conflict:customer:{first}:REJECTED:event:evt_rej_{pcids[0]}", kind="conflict", provider="blaaiz",
            customer_id=first, state="open", title="raised before", opened_at=clock.now(), repeats=0,
        ).returning(alerts.c.id)).scalar_one()

    results = writer.ingest(batch)

    assert [r.outcome for r in results] == ["conflict"] * 70
    with container.engine.connect() as conn:
        raised = dict(conn.execute(select(alerts.c.id, alerts.c.customer_id)).all())
        notices = conn.execute(select(notifications.c.alert_id, notifications.c.channel)).all()
    assert len(raised) == 70
    assert raised[existing] == first
    assert sorted(raised.values()) == sorted(r.customer_id for r in results)
    channels = container.effects.alerts.channels
    assert sorted(notices) == sorted((alert_id, channel) for alert_id in raised if alert_id != existing
                                     for channel in channels)


def test_a_postgres_batch_that_collides_at_the_end_of_its_pipeline_is_run_again(
        container: Container, clock: FakeClock, writer: _Writer, caplog: pytest.LogCaptureFixture) -> None:
    """Another transaction stores the same event and commits while the batch waits for the customer's lock:
    the batch's prefetch read the inbox before that commit, so its insert breaks the unique index, which the
    pipeline reports only at its end. The batch is rolled back and run again, and then finds the copy."""
    if container.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's row locks and pipeline mode")
    caplog.set_level(logging.INFO, logger="tracker.ingest")
    writer.ingest([blaaiz_delivery(clock, "cus_race", "PROCESSING")])
    delivery = blaaiz_delivery(clock, "cus_race", "VERIFIED", event_id="evt_race")
    assert delivery.parsed is not None
    outcome: list[Any] = []
    with container.engine.connect() as other:
        other.begin()
        customer_id = other.execute(select(customers.c.id).where(customers.c.provider_customer_id == "cus_race")
                                    .with_for_update()).scalar_one()
        first = other.execute(inbound_events.insert().returning(inbound_events.c.id).values(
            provider="blaaiz", event_id="evt_race", fingerprint=delivery.parsed.fingerprint, body=delivery.body,
            customer_id=customer_id, received_at=clock.now(), processed_at=clock.now(), outcome="accepted",
        )).scalar_one()
        batch = threading.Thread(target=lambda: outcome.append(writer.ingest([delivery])))
        batch.start()
        deadline = time.monotonic() + 10
        while not other.exec_driver_sql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                        "AND wait_event_type = 'Lock'").scalar_one():
            assert time.monotonic() < deadline, "the batch never waited for the customer's lock"
            time.sleep(0.01)  # polling a condition, bounded by the deadline
        other.commit()
    batch.join(10)
    assert not batch.is_alive()
    assert "ingest batch retried after a concurrent write (UniqueViolation)" in caplog.messages
    [result] = outcome[0]
    assert result.outcome == "duplicate"
    assert inbox(container)[result.event_id].duplicate_of == first
    with container.engine.connect() as conn:
        assert conn.execute(select(customers.c.state).where(customers.c.id == customer_id)).scalar_one() == "pending"


def test_a_batch_that_fails_half_way_leaves_nothing_behind(container: Container, clock: FakeClock,
                                                          writer: _Writer) -> None:
    """The customers' UPDATE is already sent when a later row cannot be built: the transaction is rolled back
    (on PostgreSQL the writer's connection is in autocommit mode and the batch sends its own BEGIN), and the
    writer's next batch starts clean."""
    writer.ingest([blaaiz_delivery(clock, "cus_half", "PROCESSING")])
    before = inbox(container)
    moving = blaaiz_delivery(clock, "cus_half", "VERIFIED")
    broken = blaaiz_delivery(clock, "cus_other", "PROCESSING")
    broken.headers = {"user-agent": object()}  # type: ignore[dict-item]  # not text: json.dumps fails
    with pytest.raises(Exception, match="not JSON serializable"):
        writer.ingest([moving, broken])
    assert inbox(container) == before
    with container.engine.connect() as conn:
        rows = dict(conn.execute(select(customers.c.provider_customer_id, customers.c.state)).all())
    assert rows == {"cus_half": "pending"}
    assert writer.ingest([moving])[0].outcome == "accepted"


def test_a_batch_whose_notices_fail_leaves_nothing_behind(container: Container, clock: FakeClock,
                                                          writer: _Writer) -> None:
    """On PostgreSQL COMMIT goes with the notices: when the database refuses them (here a trigger), nothing of
    the batch is committed, not its alerts, inbox rows or customers, and the writer's next batch starts clean."""
    writer.ingest([blaaiz_delivery(clock, "cus_n", "VERIFIED"), blaaiz_delivery(clock, "cus_m", "PROCESSING")])
    before = inbox(container)
    if container.engine.dialect.name == "postgresql":
        ddl = ["CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
               "$$ BEGIN RAISE EXCEPTION 'notices refused'; END $$",
               "CREATE TRIGGER refuse BEFORE INSERT ON notifications FOR EACH ROW EXECUTE FUNCTION refuse()"]
        undo = ["DROP TRIGGER refuse ON notifications", "DROP FUNCTION refuse()"]
    else:
        ddl = ["CREATE TRIGGER refuse BEFORE INSERT ON notifications BEGIN SELECT RAISE(ABORT, 'notices refused'); "
               "END"]
        undo = ["DROP TRIGGER refuse"]
    with container.engine.begin() as conn:
        for statement in ddl:
            conn.exec_driver_sql(statement)
    batch = [blaaiz_delivery(clock, "cus_n", "REJECTED"), blaaiz_delivery(clock, "cus_m", "VERIFIED")]
    try:
        with pytest.raises(DatabaseUnavailable):  # what the senders are told: 503, retry later
            writer.ingest(batch)
    finally:
        with container.engine.begin() as conn:
            for statement in undo:
                conn.exec_driver_sql(statement)
    assert inbox(container) == before
    with container.engine.connect() as conn:
        assert conn.execute(select(alerts.c.id)).all() == []
        rows = dict(conn.execute(select(customers.c.provider_customer_id, customers.c.state)).all())
    assert rows == {"cus_n": "verified", "cus_m": "pending"}
    assert [r.outcome for r in writer.ingest(batch)] == ["conflict", "accepted"]
    with container.engine.connect() as conn:
        assert len(conn.execute(select(notifications.c.id)).all()) == len(container.effects.alerts.channels)


def test_postgres_refuses_a_batch_whose_customer_moved_under_it_before_its_commit(
        container: Container, clock: FakeClock, writer: _Writer, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """COMMIT goes with the writes, so the server checks that the UPDATE matched every customer at the version
    the batch read (tracker_expect_rows, migration 0006). The prefetch locks the customers, so only a bug can
    make it miss; here the first prefetch hands over a stale version. The server refuses the batch before its
    COMMIT (a serialization failure), nothing of it stays, and the batch is run again: one move, once."""
    if container.engine.dialect.name != "postgresql":
        pytest.skip("SQLite's writer checks the count itself, before COMMIT")
    caplog.set_level(logging.INFO, logger="tracker.ingest")
    writer.ingest([blaaiz_delivery(clock, "cus_stale", "PROCESSING")])
    statements = container.ingestor.statements
    prefetch = statements.prefetch
    calls = []

    def stale_once(*args: Any) -> Any:
        by_id, by_print, found = prefetch(*args)
        calls.append(len(calls))
        if len(calls) == 1:
            found = {pcid: dataclasses.replace(c, snapshot=dataclasses.replace(
                c.snapshot, version=c.snapshot.version - 1)) for pcid, c in found.items()}
        return by_id, by_print, found

    monkeypatch.setattr(statements, "prefetch", stale_once)
    before = inbox(container)

    results = writer.ingest([blaaiz_delivery(clock, "cus_stale", "VERIFIED")])

    assert len(calls) == 2
    assert "ingest batch retried after SerializationFailure" in caplog.messages
    assert [r.outcome for r in results] == ["accepted"]
    assert set(inbox(container)) - set(before) == {results[0].event_id}
    with container.engine.connect() as conn:
        moves = conn.execute(select(history.c.event_id).where(history.c.to_state == "verified")).scalars().all()
        version = conn.execute(select(customers.c.version)
                               .where(customers.c.provider_customer_id == "cus_stale")).scalar_one()
    assert moves == [results[0].event_id]
    assert version == 3  # registered by the first webhook (1), pending (2), verified (3)


def test_the_writers_alert_statements_write_every_column_the_alerts_module_fills(container: Container,
                                                                                 clock: FakeClock) -> None:
    """The writer inserts alerts and notices with its own statements (tracker.ingest.ALERT_COLUMNS and
    NOTIFICATION_COLUMNS): a column tracker.alerts starts filling must not be dropped there without a word."""
    from tracker.alerts import NewAlert, notification_rows_for, prepare_alerts
    from tracker.ingest import ALERT_COLUMNS, NOTIFICATION_COLUMNS

    customer = {"id": 1, "provider": "blaaiz", "provider_customer_id": "cus_1", "reference": None,
                "pending_since": None, "customer_type": "individual"}
    prepared = prepare_alerts([NewAlert("conflict:x", "conflict", "blaaiz", "title", customer)],
                              container.effects.alerts, clock.now())
    (_, values), = prepared.values()
    assert set(values) == set(ALERT_COLUMNS)
    notices = notification_rows_for(prepared, {"conflict:x": 7}, container.effects.alerts, clock.now())
    assert notices
    assert all(set(row) == set(NOTIFICATION_COLUMNS) for row in notices)
