"""Concurrent copies of one webhook against live servers on PostgreSQL: exactly one transition, no 5xx.

Fifty copies of one delivery arrive at the same moment, at one ``tracker serve`` process (the inbox writer
folds them into one or a few batches) or spread over two processes sharing the database (the copies race in
separate transactions: the unique indexes on the inbox decide). Either way one copy is stored and ``accepted``,
the other 49 are ``duplicate`` and point at it, and the applier (in whichever process holds its lease) moves
the customer once.
These tests always use PostgreSQL, whatever backend the run is for.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select

from tests.conftest import (
    LiveServer,
    blaaiz_event,
    create_pg_database,
    drop_pg_database,
    require_postgres,
    signed_headers,
)
from tracker.apikeys import ApiKeys
from tracker.clock import SystemClock
from tracker.db import migrate
from tracker.db.engine import make_engine
from tracker.db.tables import customers, history, inbound_events

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

COPIES = 50


@dataclass
class Cluster:
    url: str
    engine: Engine
    servers: list[LiveServer]
    key: dict[str, str]


def live_server(url: str) -> LiveServer:
    return LiveServer(url)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A fresh, migrated PostgreSQL database with two ``tracker serve`` processes on it."""
    require_postgres()
    url = create_pg_database("tracker_concurrency")
    engine = make_engine(url)
    servers: list[LiveServer] = []
    try:
        migrate.upgrade(engine)
        key = {"authorization": f"Bearer {ApiKeys(engine, SystemClock()).create('concurrency', 'write')}"}
        servers = [live_server(url), live_server(url)]
        with ThreadPoolExecutor(len(servers)) as pool:
            list(pool.map(LiveServer.start, servers))
        yield Cluster(url, engine, servers, key)
    finally:
        for server in servers:
            server.stop()
        engine.dispose()
        drop_pg_database(url)


async def pending_customer(cluster: Cluster, pcid: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=cluster.servers[0].url, timeout=10) as http:
        body = {"provider": "blaaiz", "provider_customer_id": pcid, "customer_type": "individual"}
        created = await http.post("/v1/customers", json=body, headers=cluster.key)
        assert created.status_code == 201, created.text
        submitted = await http.post(f"/v1/customers/{created.json()['id']}/submit", headers=cluster.key)
        assert submitted.status_code == 200, submitted.text
        assert submitted.json()["state"] == "pending"
        return dict(submitted.json())


async def fire(servers: list[LiveServer], bodies: list[bytes]) -> list[httpx.Response]:
    """POST every body at once, spread round-robin over ``servers``.

    Each client first opens one keep-alive connection per copy (concurrent health checks), so the webhook
    requests themselves go out together on open connections instead of trickling in behind TCP handshakes.
    """
    share = [bodies[i::len(servers)] for i in range(len(servers))]
    clients = [httpx.AsyncClient(base_url=server.url, timeout=30,
                                 limits=httpx.Limits(max_connections=len(mine), max_keepalive_connections=len(mine)))
               for server, mine in zip(servers, share, strict=True)]
    try:
        warm = [http.get("/healthz") for http, mine in zip(clients, share, strict=True) for _ in mine]
        assert all(r.status_code == 200 for r in await asyncio.gather(*warm))
        timestamp = int(time.time())
        posts = [http.post("/webhooks/blaaiz", content=body, headers=signed_headers(body, timestamp))
                 for http, mine in zip(clients, share, strict=True) for body in mine]
        return list(await asyncio.gather(*posts))
    finally:
        for http in clients:
            await http.aclose()


def assert_one_transition(cluster: Cluster, customer: dict[str, Any], responses: list[httpx.Response]) -> None:
    assert [r.status_code for r in responses] == [200] * COPIES, [r.text for r in responses if r.status_code != 200]
    answers = [r.json() for r in responses]
    assert Counter(a["status"] for a in answers) == {"accepted": 1, "duplicate": COPIES - 1}
    original = next(a["event"] for a in answers if a["status"] == "accepted")
    assert {a["event"] for a in answers} == {original}  # every copy names the one stored delivery

    pcid = customer["provider_customer_id"]
    inbox = applied(cluster, pcid)
    with cluster.engine.connect() as conn:
        moves = conn.execute(select(history.c.event_id, history.c.from_state, history.c.to_state)
                             .where(history.c.customer_id == customer["id"], history.c.source == "webhook")).all()
        row = conn.execute(select(customers.c.state, customers.c.version)
                           .where(customers.c.id == customer["id"])).one()
    assert [(r.id, r.outcome) for r in inbox] == [(original, "applied")]
    assert [tuple(m) for m in moves] == [(original, "pending", "verified")]
    assert (row.state, row.version) == ("verified", customer["version"] + 1)


def applied(cluster: Cluster, pcid: str, timeout: float = 10.0) -> list[Any]:
    """The customer's inbox rows once the applier (another process) has applied them all."""
    deadline = time.monotonic() + timeout
    while True:
        with cluster.engine.connect() as conn:
            rows = conn.execute(select(inbound_events.c.id, inbound_events.c.outcome, inbound_events.c.processed_at)
                                .where(inbound_events.c.provider_customer_id == pcid)
                                .order_by(inbound_events.c.id)).all()
        if rows and all(r.processed_at is not None for r in rows):
            return list(rows)
        assert time.monotonic() < deadline, f"not applied within {timeout} s: {rows}"
        time.sleep(0.02)


@pytest.mark.parametrize("processes", [1, 2], ids=["one-server", "two-servers"])
async def test_copies_of_one_event_id_make_one_transition(cluster: Cluster, processes: int) -> None:
    pcid = f"cus_same_id_{processes}_{uuid.uuid4().hex[:8]}"
    customer = await pending_customer(cluster, pcid)
    body = json.dumps(blaaiz_event(pcid, "VERIFIED", event_id=f"evt_{uuid.uuid4().hex}")).encode()
    responses = await fire(cluster.servers[:processes], [body] * COPIES)
    assert_one_transition(cluster, customer, responses)


@pytest.mark.parametrize("processes", [1, 2], ids=["one-server", "two-servers"])
async def test_same_content_under_different_event_ids_makes_one_transition(cluster: Cluster, processes: int) -> None:
    pcid = f"cus_same_print_{processes}_{uuid.uuid4().hex[:8]}"
    customer = await pending_customer(cluster, pcid)
    bodies = [json.dumps(blaaiz_event(pcid, "VERIFIED", event_id=f"evt_{uuid.uuid4().hex}")).encode()
              for _ in range(COPIES)]
    assert len(set(bodies)) == COPIES
    responses = await fire(cluster.servers[:processes], bodies)
    assert_one_transition(cluster, customer, responses)
