"""GET /v1/stream against real `tracker serve` processes: every transition and alert change as an event with a
strictly increasing id, resumable with Last-Event-ID across a restart, filtered, with heartbeats; on PostgreSQL
a change made through one process reaches the streams of another."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from datetime import timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import BACKEND, LiveServer, blaaiz_event, make_settings, signed_headers
from tracker.bootstrap import build


@pytest.fixture
def admin(database_url: str) -> str:
    container = build(make_settings(database_url))
    try:
        return container.api_keys.create("stream-admin", "admin")
    finally:
        container.engine.dispose()


@pytest.fixture
def server(database_url: str) -> Iterator[LiveServer]:
    live = LiveServer(database_url, {"TRACKER_STREAM_HEARTBEAT": "0.3s"})
    live.start()
    yield live
    live.stop()


class Events:
    """The events one stream received, parsed as an EventSource does."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.comments: list[str] = []
        self.arrived = asyncio.Event()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [item for item in self.items if item["event"] == kind]

    async def until(self, check: Any, seconds: float = 15.0) -> None:
        deadline = time.monotonic() + seconds
        while not check(self):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"timed out; received {self.items}"
            self.arrived.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), remaining)


@asynccontextmanager
async def listening(url: str, key: str, query: str = "", last_event_id: int | None = None
                    ) -> AsyncIterator[Events]:
    events = Events()
    headers = {"authorization": f"Bearer {key}"}
    if last_event_id is not None:
        headers["last-event-id"] = str(last_event_id)
    opened = asyncio.Event()

    async def read() -> None:
        async with httpx.AsyncClient(timeout=None) as http, \
                http.stream("GET", f"{url}/v1/stream{query}", headers=headers) as response:
            assert response.status_code == 200, await response.aread()
            assert response.headers["content-type"].startswith("text/event-stream")
            fields: dict[str, str] = {}
            async for line in response.aiter_lines():
                if line.startswith(":"):
                    events.comments.append(line)
                    opened.set()
                elif line == "":
                    if "data" in fields:
                        events.items.append({"id": int(fields["id"]), "event": fields["event"],
                                             "data": json.loads(fields["data"])})
                    fields = {}
                else:
                    name, _, value = line.partition(": ")
                    fields[name] = value
                events.arrived.set()

    task = asyncio.create_task(read())
    await asyncio.wait_for(opened.wait(), 15)  # the stream's opening comment: it is following the feed
    try:
        yield events
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def post_webhook(url: str, pcid: str, status: str, updated_at: str) -> None:
    body = json.dumps(blaaiz_event(pcid, status, updated_at=updated_at)).encode()
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{url}/webhooks/blaaiz", content=body,
                                   headers=signed_headers(body, int(time.time())))
    assert response.status_code == 200, response.text


async def test_transitions_arrive_in_order_with_increasing_ids(server, admin) -> None:
    async with listening(server.url, admin) as events:
        await post_webhook(server.url, "cus_s1", "PROCESSING", "2026-01-05T09:00:00Z")
        await post_webhook(server.url, "cus_s1", "VERIFIED", "2026-01-05T09:30:00Z")
        await events.until(lambda e: len(e.of("transition")) >= 2)
    moves = events.of("transition")
    assert [(m["data"]["from"], m["data"]["to"]) for m in moves] == [("awaiting_documents", "pending"),
                                                                      ("pending", "verified")]
    assert moves[0]["data"]["provider"] == "blaaiz"
    assert moves[0]["data"]["source"] == "webhook"
    ids = [item["id"] for item in events.items]
    assert ids == sorted(set(ids))
    assert all(m["data"]["id"] == m["id"] for m in moves)


async def test_a_stream_resumed_after_a_restart_misses_nothing(database_url, admin) -> None:
    first = LiveServer(database_url)
    first.start()
    try:
        async with listening(first.url, admin) as events:
            await post_webhook(first.url, "cus_r1", "PROCESSING", "2026-01-05T09:00:00Z")
            await events.until(lambda e: len(e.of("transition")) == 1)
        seen = events.items[-1]["id"]
        # while no stream listens, and across the restart, more changes happen
        await post_webhook(first.url, "cus_r2", "PROCESSING", "2026-01-05T09:01:00Z")
        await post_webhook(first.url, "cus_r1", "REJECTED", "2026-01-05T09:02:00Z")
    finally:
        first.stop()
    second = LiveServer(database_url)
    second.start()
    try:
        await post_webhook(second.url, "cus_r2", "VERIFIED", "2026-01-05T09:03:00Z")
        async with listening(second.url, admin, last_event_id=seen) as resumed:
            await resumed.until(lambda e: len(e.of("transition")) >= 3)
            await post_webhook(second.url, "cus_r3", "PROCESSING", "2026-01-05T09:04:00Z")
            await resumed.until(lambda e: len(e.of("transition")) >= 4)
    finally:
        second.stop()
    moves = [(m["data"]["to"]) for m in resumed.of("transition")]
    assert moves == ["pending", "rejected", "verified", "pending"]
    assert resumed.items[0]["id"] > seen
    ids = [item["id"] for item in resumed.items]
    assert ids == sorted(set(ids))


async def test_filters_and_heartbeats(server, admin) -> None:
    async with listening(server.url, admin, "?provider=connectfi") as other, \
            listening(server.url, admin, "?provider=blaaiz") as blaaiz:
        await post_webhook(server.url, "cus_f1", "PROCESSING", "2026-01-05T09:00:00Z")
        await blaaiz.until(lambda e: len(e.of("transition")) == 1)
        await other.until(lambda e: any("heartbeat" in c for c in e.comments))
    assert other.items == []
    customer_id = blaaiz.items[0]["data"]["customer_id"]
    async with listening(server.url, admin, f"?customer_id={customer_id + 1}") as elsewhere, \
            listening(server.url, admin, f"?customer_id={customer_id}") as this_one:
        await post_webhook(server.url, "cus_f1", "VERIFIED", "2026-01-05T09:10:00Z")
        await this_one.until(lambda e: len(e.of("transition")) == 1)
        await elsewhere.until(lambda e: sum("heartbeat" in c for c in e.comments) >= 2)
    assert elsewhere.items == []


async def test_alert_changes_are_events_too(server, admin, database_url) -> None:
    container = build(make_settings(database_url))
    try:
        async with listening(server.url, admin) as events:
            await post_webhook(server.url, "cus_a1", "PROCESSING", "2026-01-05T09:00:00Z")
            await events.until(lambda e: len(e.of("transition")) == 1)
            container.escalator.clock = _Later(timedelta(hours=3))  # another process escalates, 3 h later
            await container.escalator.tick()
            await events.until(lambda e: len(e.of("alert")) == 1)
            raised = events.of("alert")[0]["data"]
            assert (raised["action"], raised["alert_kind"], raised["provider"]) == ("raised", "overdue", "blaaiz")
            assert raised["customer_id"] == events.of("transition")[0]["data"]["customer_id"]
            alert_id = raised["alert_id"]
            async with httpx.AsyncClient() as http:
                acked = await http.post(f"{server.url}/v1/alerts/{alert_id}/acknowledge",
                                        headers={"authorization": f"Bearer {admin}"})
            assert acked.status_code == 200
            await events.until(lambda e: any(a["data"]["action"] == "acknowledged" for a in e.of("alert")))
    finally:
        container.engine.dispose()


class _Later:
    def __init__(self, ahead: timedelta) -> None:
        from tracker.clock import SystemClock

        self.ahead = ahead
        self.inner = SystemClock()

    def now(self) -> Any:
        return self.inner.now() + self.ahead


@pytest.mark.parametrize(("query", "headers", "status", "message"), [
    ("?provider=acme", {}, 400, "provider must be one of"),
    ("?customer_id=x", {}, 400, "customer_id must be a whole number"),
    ("?colour=red", {}, 400, "unknown parameter 'colour'"),
    ("", {"last-event-id": "abc"}, 400, "Last-Event-ID must be the id"),
    ("", {"last-event-id": "99999999999999999999"}, 400, "Last-Event-ID must be the id"),
])
async def test_bad_stream_requests_say_why(server, admin, query, headers, status, message) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{server.url}/v1/stream{query}",
                                  headers={"authorization": f"Bearer {admin}", **headers})
        assert response.status_code == status
        assert message in response.json()["error"]["message"]
        assert (await http.get(f"{server.url}/v1/stream")).status_code == 401


@pytest.mark.skipif(BACKEND != "postgres", reason="several web processes share a database on PostgreSQL")
async def test_two_web_processes_each_stream_a_change_made_through_the_other(database_url, admin) -> None:
    one, two = LiveServer(database_url), LiveServer(database_url)
    one.start()
    two.start()
    try:
        async with listening(one.url, admin) as at_one, listening(two.url, admin) as at_two:
            await post_webhook(two.url, "cus_p1", "PROCESSING", "2026-01-05T09:00:00Z")
            await at_one.until(lambda e: len(e.of("transition")) == 1, seconds=5)
            await post_webhook(one.url, "cus_p2", "PROCESSING", "2026-01-05T09:00:00Z")
            await at_two.until(lambda e: len(e.of("transition")) == 2, seconds=5)
            await at_one.until(lambda e: len(e.of("transition")) == 2, seconds=5)
        assert [m["id"] for m in at_one.of("transition")] == [m["id"] for m in at_two.of("transition")]
    finally:
        one.stop()
        two.stop()
