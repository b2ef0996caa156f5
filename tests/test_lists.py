"""The lists an operator works from: customers by how long they have been pending, the summary's oldest pending
customer, and /v1/alerts filtered and paged like the other lists."""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import register
from tracker.bootstrap import Container
from tracker.clock import FakeClock


async def pending_customers(client: httpx.AsyncClient, clock: FakeClock, key: dict[str, str], count: int,
                            prefix: str = "cus_age") -> list[dict[str, Any]]:
    """``count`` customers submitted ten minutes apart, the first the longest pending."""
    made = []
    for n in range(count):
        customer = await register(client, key, f"{prefix}{n}")
        submitted = await client.post(f"/v1/customers/{customer['id']}/submit", headers=key)
        assert submitted.status_code == 200, submitted.text
        made.append(submitted.json())
        clock.advance(timedelta(minutes=10))
    return made


async def test_sort_pending_since_lists_the_longest_pending_first_across_pages(client, clock, write_key,
                                                                              read_key) -> None:
    made = await pending_customers(client, clock, write_key, 5)
    await register(client, write_key, "cus_never_submitted")  # not pending: not in this list
    seen, cursor = [], None
    while True:
        query = "sort=pending_since&limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = (await client.get(f"/v1/customers?{query}", headers=read_key)).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [customer["id"] for customer in made]  # the default order is the reverse: newest change first
    newest_first = (await client.get("/v1/customers?limit=500", headers=read_key)).json()["items"]
    assert newest_first[0]["provider_customer_id"] == "cus_never_submitted"

    filtered = (await client.get("/v1/customers?sort=pending_since&provider=blaaiz&pending_longer_than=25m",
                                 headers=read_key)).json()["items"]
    assert [item["id"] for item in filtered] == [customer["id"] for customer in made[:3]]


@pytest.mark.parametrize(("query", "message"), [
    ("sort=oldest", "sort must be one of updated, pending_since"),
    ("sort=", "sort must be one of"),
])
async def test_bad_sorts_are_refused(client, read_key, query, message) -> None:
    response = await client.get(f"/v1/customers?{query}", headers=read_key)
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]


async def test_a_cursor_continues_only_the_sort_it_came_from(client, clock, write_key, read_key) -> None:
    await pending_customers(client, clock, write_key, 3)
    by_age = (await client.get("/v1/customers?sort=pending_since&limit=1", headers=read_key)).json()
    mixed = await client.get(f"/v1/customers?limit=1&cursor={by_age['next_cursor']}", headers=read_key)
    assert mixed.status_code == 400
    assert "sort=pending_since" in mixed.json()["error"]["message"]
    newest = (await client.get("/v1/customers?limit=1", headers=read_key)).json()
    other = await client.get(f"/v1/customers?sort=pending_since&cursor={newest['next_cursor']}", headers=read_key)
    assert other.status_code == 400


async def test_the_summary_names_the_oldest_pending_customer_per_provider(client, clock, write_key,
                                                                         read_key) -> None:
    made = await pending_customers(client, clock, write_key, 3)
    summary = (await client.get("/v1/summary", headers=read_key)).json()["providers"]
    assert summary["blaaiz"]["oldest_pending_customer"] == {
        "id": made[0]["id"], "provider_customer_id": "cus_age0", "pending_since": made[0]["pending_since"]}
    assert summary["blaaiz"]["oldest_pending_seconds"] == 30 * 60
    assert summary["connectfi"]["oldest_pending_customer"] is None
    assert summary["cryptopocket"]["oldest_pending_seconds"] is None


async def alerted(client: httpx.AsyncClient, clock: FakeClock, container: Container, key: dict[str, str],
                  count: int) -> list[dict[str, Any]]:
    """``count`` customers pending past the overdue threshold, each with its overdue alert raised."""
    made = await pending_customers(client, clock, key, count, prefix="cus_alert")
    clock.advance(timedelta(hours=3))
    await container.escalator.tick()
    return made


async def test_alerts_page_with_cursor_and_next_cursor(client, clock, container, write_key, read_key) -> None:
    await alerted(client, clock, container, write_key, 5)
    everything = (await client.get("/v1/alerts?limit=500", headers=read_key)).json()
    assert len(everything["items"]) == 5
    assert everything["next_cursor"] is None
    seen, cursor = [], None
    while True:
        page = (await client.get("/v1/alerts?limit=2" + (f"&cursor={cursor}" if cursor else ""),
                                 headers=read_key)).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [item["id"] for item in everything["items"]]
    assert seen == sorted(seen, reverse=True)  # newest first
    legacy = (await client.get(f"/v1/alerts?limit=2&before={seen[1]}", headers=read_key)).json()
    assert [item["id"] for item in legacy["items"]] == seen[2:4]


async def test_alerts_filter_by_provider_and_customer(client, clock, container, write_key, read_key) -> None:
    made = await alerted(client, clock, container, write_key, 3)
    one = (await client.get(f"/v1/alerts?customer_id={made[1]['id']}", headers=read_key)).json()["items"]
    assert [item["customer_id"] for item in one] == [made[1]["id"]]
    assert len((await client.get("/v1/alerts?provider=blaaiz", headers=read_key)).json()["items"]) == 3
    assert (await client.get("/v1/alerts?provider=connectfi", headers=read_key)).json()["items"] == []


@pytest.mark.parametrize(("query", "message"), [
    ("status=open", "unknown parameter 'status'"),
    ("state=closed", "state must be one of open, acknowledged, resolved"),
    ("provider=acme", "provider must be one of"),
    ("customer_id=abc", "customer_id must be a whole number"),
    ("customer_id=99999999999999999999", "customer_id must be between 1 and"),
    ("limit=501", "limit must be between 1 and 500"),
    ("cursor=not-ours", "cursor is not one this service gave out"),
    (f"cursor={base64.urlsafe_b64encode(b'e5').decode().rstrip('=')}", "cursor is not one this service gave out"),
    ("cursor=YTE&before=3", "send cursor or before, not both"),
])
async def test_bad_alert_list_parameters_are_refused(client, read_key, query, message) -> None:
    response = await client.get(f"/v1/alerts?{query}", headers=read_key)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]


async def test_changed_since_fetches_only_what_changed_after_a_time(client, clock, write_key, read_key) -> None:
    made = await pending_customers(client, clock, write_key, 3, prefix="cus_changed")
    since = clock.now().isoformat().replace("+00:00", "Z")  # after the last submit
    clock.advance(timedelta(minutes=1))
    again = await client.post(f"/v1/customers/{made[1]['id']}/submit", headers=write_key)
    assert again.json()["version"] == made[1]["version"]  # already pending: nothing changed, not listed
    await register(client, write_key, "cus_changed_new")
    changed = (await client.get("/v1/customers", params={"changed_since": since}, headers=read_key)).json()["items"]
    assert [item["provider_customer_id"] for item in changed] == ["cus_changed_new"]
    with_offset = await client.get("/v1/customers", params={"changed_since": since.replace("Z", "+00:00")},
                                   headers=read_key)
    assert [item["provider_customer_id"] for item in with_offset.json()["items"]] == ["cus_changed_new"]
    everything = (await client.get("/v1/customers?changed_since=2000-01-01T00:00:00Z", headers=read_key)).json()
    assert len(everything["items"]) == 4


async def test_customer_type_filter(client, write_key, read_key) -> None:
    await register(client, write_key, "cus_person")
    await register(client, write_key, "cus_company", customer_type="business")
    found = (await client.get("/v1/customers?customer_type=business", headers=read_key)).json()["items"]
    assert [item["provider_customer_id"] for item in found] == ["cus_company"]


@pytest.mark.parametrize(("query", "message"), [
    ("changed_since=yesterday", "changed_since must be an ISO 8601 time with its zone"),
    ("changed_since=2026-01-05T09:30:00", "changed_since must be an ISO 8601 time with its zone"),
    ("changed_since=99999-01-01T00:00:00Z", "changed_since must be an ISO 8601 time"),
    ("customer_type=robot", "customer_type must be one of individual, business, unknown"),
])
async def test_bad_list_filters_are_refused(client, read_key, query, message) -> None:
    response = await client.get(f"/v1/customers?{query}", headers=read_key)
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]
