"""The API's fast reads (tracker.db.reads) match the SQLAlchemy reference queries; the keyed bulk update."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from tests.conftest import register
from tracker.db import queries
from tracker.db.reads import API_COLUMNS, KEY_COLUMNS, CustomerReads
from tracker.db.tables import customers
from tracker.domain.lifecycle import PROVIDERS
from tracker.web.responses import customer_json, dumps, plain_json_response

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
STATES = ("awaiting_documents", "pending", "needs_action", "verified", "rejected")


def seed(engine: Engine, n: int = 240) -> None:
    rnd = random.Random(7)
    rows = []
    for i in range(n):
        state = STATES[i % len(STATES)]
        pending = state == "pending"
        # Some stamps on whole seconds (no microseconds), some shared by several customers (cursor ties).
        updated = NOW - timedelta(minutes=rnd.randrange(0, 600), microseconds=rnd.choice((0, 0, 17, 250001)))
        since = updated - timedelta(hours=rnd.choice((0, 1, 3, 6, 30))) if pending else None
        rows.append({
            "provider": PROVIDERS[i % len(PROVIDERS)], "provider_customer_id": f"p{i % 7}-{i}",
            "customer_type": "business" if i % 11 == 0 else "individual",
            "reference": f"ref{i % 13}" if i % 5 else None, "application_id": f"app{i}" if i % 3 == 0 else None,
            "state": state, "provider_status": "Ünïcode \"status\" ✓" if i % 17 == 0 else "PROCESSING",
            "tier": rnd.choice(("overdue", "critical", "none")) if pending else "none",
            "pending_since": since, "decided_at": updated if state in ("verified", "rejected") else None,
            "rejection_reason": "blurred\nscan" if state == "rejected" else None, "attempts": i % 4,
            "rejections": i % 2, "version": 1 + i % 5, "discovered_by": "api",
            "flags": json.dumps(["business_upload_via_individual_slot"]) if i % 11 == 0 else None,
            "created_at": updated - timedelta(days=1), "updated_at": updated,
        })
    with engine.begin() as conn:
        conn.execute(customers.insert(), rows)


def reference_rows(engine: Engine, **filters: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [{name: row._mapping[name] for name in API_COLUMNS}
                for row in queries.list_customers(conn, **filters)]


async def test_point_reads_match_the_reference(engine: Engine) -> None:
    seed(engine)
    reads = CustomerReads(engine)
    with engine.connect() as conn:
        ids = [row.id for row in conn.execute(customers.select())]
        expected = {i: queries.get_customer(conn, i) for i in ids}
    rows = await asyncio.gather(*(reads.get(i) for i in [*ids, *ids[:20], 999_999]))
    keys = await asyncio.gather(*(reads.key(i) for i in ids))
    for ident, row in zip([*ids, *ids[:20]], rows, strict=False):
        assert row == {name: expected[ident]._mapping[name] for name in API_COLUMNS}
    assert rows[-1] is None
    for ident, key in zip(ids, keys, strict=True):
        assert key == {name: expected[ident]._mapping[name] for name in KEY_COLUMNS}
    reads.close()


async def test_concurrent_point_reads_take_one_statement_a_batch(engine: Engine) -> None:
    """Reads that arrive together are fetched together, by the reads thread: on PostgreSQL one round trip, on
    SQLite one statement whose single row holds the whole batch (the sqlite3 module takes the GIL back at every
    row it steps, and under load every such turn waits for the event loop)."""
    seed(engine, 40)
    reads = CustomerReads(engine)
    statements: list[str] = []
    run = reads.run

    def counted(sql: str, params: Any) -> list[Any]:
        statements.append(sql)
        return run(sql, params)

    reads.run = counted  # type: ignore[method-assign]
    try:
        await asyncio.gather(*(reads.get(i) for i in range(1, 41)))
        statements.clear()
        rows = await asyncio.gather(*(reads.get(i) for i in [*range(1, 41), 77_777]))
    finally:
        reads.close()
    assert [row and row["id"] for row in rows] == [*range(1, 41), None]
    assert len(statements) <= 2, statements  # one batch (two if the first read left before the rest queued)


async def test_awkward_text_survives_the_batched_read(engine: Engine) -> None:
    seed(engine, 3)
    awkward = ["tab\tand \\ backslash", "emoji \U0001f600 and \u2028 separator", '{"json": [1]}']
    if engine.dialect.name == "sqlite":  # PostgreSQL's text cannot hold NUL
        awkward.append("nul\x00inside")
    with engine.begin() as conn:
        for i, value in enumerate(awkward, start=1):
            conn.execute(customers.update().where(customers.c.id == 1 + i % 3)
                         .values(rejection_reason=value, provider_status=value[::-1], reference=value))
        expected = {i: queries.get_customer(conn, i) for i in (1, 2, 3)}
    reads = CustomerReads(engine)
    try:
        rows = await asyncio.gather(*(reads.get(i) for i in (1, 2, 3)))
    finally:
        reads.close()
    for ident, row in zip((1, 2, 3), rows, strict=True):
        assert row == {name: expected[ident]._mapping[name] for name in API_COLUMNS}


FILTERS: list[dict[str, Any]] = [
    {}, {"provider": "connectfi"}, {"state": "pending"}, {"provider": "blaaiz", "state": "verified"},
    {"tier": "critical"}, {"tier": "overdue", "provider": "cryptopocket"}, {"tier": "none"},
    {"state": "pending", "tier": "critical"}, {"reference": "ref3"}, {"reference": "ref4", "state": "rejected"},
    {"provider_customer_id": "p3-10"}, {"provider_customer_id": "p1-8", "provider": "connectfi"},
    {"pending_before": NOW - timedelta(hours=2)}, {"pending_before": NOW - timedelta(hours=5), "provider": "blaaiz"},
    {"pending_before": NOW - timedelta(hours=2), "tier": "overdue"},
    {"pending_before": NOW - timedelta(hours=2), "state": "verified"},
]


@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: ",".join(sorted(f)) or "none")
@pytest.mark.parametrize("limit", [1, 7, 50])
async def test_pages_match_the_reference(engine: Engine, filters: dict[str, Any], limit: int) -> None:
    seed(engine)
    reads = CustomerReads(engine)
    after = None
    for _ in range(60):
        expected = reference_rows(engine, **filters, after=after, limit=limit)
        got = reads.page(**filters, after=after, limit=limit)
        assert got == expected
        if len(got) < limit:
            break
        after = (got[-1]["updated_at"], got[-1]["id"])
    reads.close()


def test_customer_body_is_byte_for_byte_the_same(engine: Engine) -> None:
    seed(engine, 60)
    reads = CustomerReads(engine)
    rows = reads.page(limit=60)
    assert rows
    for row in rows:
        body = customer_json(row, NOW)
        assert plain_json_response(body).body == dumps(body)
    reads.close()


def test_a_failed_read_is_a_database_error(engine: Engine) -> None:
    reads = CustomerReads(engine)
    with pytest.raises(DBAPIError):
        reads.run("SELECT no_such_column FROM customers", ())
    assert reads.run("SELECT count(*) FROM customers", ()) == [(0,)]  # a new connection after the failure
    reads.close()


async def test_a_failed_list_is_503(client, engine: Engine, read_key) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite: the list names its index, so a missing one makes the query fail")
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_customers_updated"))
    response = await client.get("/v1/customers", headers=read_key)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "database_unavailable"


async def test_a_lost_postgres_connection_is_replaced(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only")
    seed(engine, 10)
    reads = CustomerReads(engine)
    first = await reads.get(1)
    assert first is not None
    with engine.begin() as conn:  # kill every other session: the reader's kept connections among them
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
    assert await reads.get(1) == first
    reads.close()


async def test_timestamps_come_back_in_utc_itself(engine: Engine) -> None:
    """PostgreSQL sessions run in UTC, so stamps arrive with ``datetime.UTC`` (converting them costs nothing),
    whatever the server's own time zone is."""
    seed(engine, 10)
    reads = CustomerReads(engine)
    row = await reads.get(1)
    assert row is not None
    assert row["created_at"].tzinfo is UTC
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            assert conn.execute(text("SHOW TIME ZONE")).scalar() == "UTC"
            raw = conn.exec_driver_sql("SELECT created_at FROM customers WHERE id = 1").scalar()
            assert raw.tzinfo is UTC
    reads.close()


async def test_get_with_if_none_match(client, write_key, read_key) -> None:
    customer = await register(client, write_key)
    url = f"/v1/customers/{customer['id']}"
    first = await client.get(url, headers=read_key)
    stale = '"c1-v0-none"'
    for tags, status in ((first.headers["etag"], 304), (stale, 200), (f"{stale}, W/{first.headers['etag']}", 304),
                         ("*", 304)):
        response = await client.get(url, headers={**read_key, "if-none-match": tags})
        assert response.status_code == status
        assert response.headers["etag"] == first.headers["etag"]
        if status == 200:
            assert response.json() == first.json()
    missing = await client.get("/v1/customers/999", headers={**read_key, "if-none-match": first.headers["etag"]})
    assert missing.status_code == 404


async def test_concurrent_requests_with_an_expired_key_check_it_once(client, container, clock, read_key) -> None:
    calls = itertools.count()
    original = container.api_keys.authenticate

    def counting(key: str) -> Any:
        next(calls)
        return original(key)

    container.api_keys.authenticate = counting
    clock.advance(timedelta(hours=1))  # the cached check has expired
    responses = await asyncio.gather(*(client.get("/v1/customers", headers=read_key) for _ in range(20)))
    assert {r.status_code for r in responses} == {200}
    assert next(calls) <= 2  # one check (a second only if the first finished before the last request came)


def test_update_customers_writes_only_rows_still_at_their_version(engine: Engine) -> None:
    """The one keyed bulk update (one statement over arrays on PostgreSQL, executemany on SQLite): rows whose
    version moved are left alone and not counted; times (and None among them) and text round-trip."""
    seed(engine, 12)
    with engine.connect() as conn:
        rows = conn.execute(customers.select().order_by(customers.c.id).limit(3)).all()
    later = NOW + timedelta(hours=1, microseconds=5)
    changes = [
        {"_id": rows[0].id, "_version": rows[0].version, "state": "verified", "decided_at": later,
         "pending_since": None, "version": rows[0].version + 1},
        {"_id": rows[1].id, "_version": rows[1].version + 7, "state": "verified", "decided_at": later,
         "pending_since": None, "version": rows[1].version + 8},  # stale: its version moved on
        {"_id": rows[2].id, "_version": rows[2].version, "state": "rejected", "decided_at": None,
         "pending_since": later, "version": rows[2].version + 1},
    ]
    with engine.begin() as conn:
        assert queries.update_customers(conn, changes) == 2
    with engine.connect() as conn:
        after = {row.id: row for row in conn.execute(customers.select().where(
            customers.c.id.in_([row.id for row in rows])))}
    assert (after[rows[0].id].state, after[rows[0].id].decided_at, after[rows[0].id].pending_since) == (
        "verified", later, None)
    assert (after[rows[1].id].state, after[rows[1].id].version) == (rows[1].state, rows[1].version)
    assert (after[rows[2].id].state, after[rows[2].id].decided_at, after[rows[2].id].pending_since) == (
        "rejected", None, later)
