"""GET /v1/events: what an operator sees of the stored inbound events (outcome and reason, never the body)."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import blaaiz_event, post_blaaiz


async def test_events_are_listed_newest_first_with_outcome_and_reason_and_no_body(client, clock, read_key) -> None:
    accepted = await post_blaaiz(client, clock, blaaiz_event("cus_1", "PROCESSING", updated_at="2026-01-05T08:00:00Z"))
    rejected = await post_blaaiz(client, clock, {"event_type": "customer.status_changed"})
    listed = await client.get("/v1/events", headers=read_key)
    assert listed.status_code == 200
    items = listed.json()["items"]
    rejected_id = int(re.search(r"stored as event (\d+)", rejected.json()["error"]["message"]).group(1))
    assert [item["id"] for item in items] == [rejected_id, accepted.json()["event"]]
    assert items[0]["outcome"] == "rejected"
    assert "missing field customer_id" in items[0]["reason"]
    assert (items[1]["outcome"], items[1]["provider_customer_id"], items[1]["provider_status"]) == (
        "applied", "cus_1", "PROCESSING")
    assert items[1]["customer_id"] is not None
    text = json.dumps(listed.json())
    assert "someone@example.invalid" not in text
    assert "body" not in items[0]
    assert listed.json()["next_cursor"] is None


async def test_events_filter_and_page_with_a_cursor(client, clock, read_key) -> None:
    ids = []
    for n in range(5):
        response = await post_blaaiz(client, clock, blaaiz_event(f"cus_{n % 2}", "PROCESSING",
                                                                 updated_at=f"2026-01-05T08:0{n}:00Z"))
        ids.append(response.json()["event"])
    first = (await client.get("/v1/events?limit=2", headers=read_key)).json()
    assert [item["id"] for item in first["items"]] == ids[:-3:-1]
    second = (await client.get(f"/v1/events?limit=2&cursor={first['next_cursor']}", headers=read_key)).json()
    assert [item["id"] for item in second["items"]] == ids[2:0:-1]
    third = (await client.get(f"/v1/events?limit=2&cursor={second['next_cursor']}", headers=read_key)).json()
    assert ([item["id"] for item in third["items"]], third["next_cursor"]) == ([ids[0]], None)
    customer_id = first["items"][0]["customer_id"]
    mine = (await client.get(f"/v1/events?customer_id={customer_id}", headers=read_key)).json()["items"]
    assert {item["provider_customer_id"] for item in mine} == {first["items"][0]["provider_customer_id"]}
    none = (await client.get("/v1/events?provider=connectfi", headers=read_key)).json()
    assert none == {"items": [], "next_cursor": None}
    applied = (await client.get("/v1/events?outcome=applied", headers=read_key)).json()["items"]
    assert all(item["outcome"] == "applied" for item in applied)


@pytest.mark.parametrize(("query", "message"), [
    ("provider=paypal", "provider must be one of"),
    ("outcome=bogus", "outcome must be one of"),
    ("customer_id=0", "customer_id must be between"),
    ("customer_id=99999999999999999999", "customer_id must be between"),
    ("customer_id=x", "customer_id must be a whole number"),
    ("limit=0", "limit must be between 1 and 500"),
    ("limit=501", "limit must be between 1 and 500"),
    ("cursor=bm9wZQ", "cursor is not one this service gave out"),
    ("cursor=%%%", "cursor is not one this service gave out"),
    ("sort=id", "unknown parameter 'sort'"),
])
async def test_bad_parameters_are_400_with_the_reason(client, read_key, query, message) -> None:
    response = await client.get(f"/v1/events?{query}", headers=read_key)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]


async def test_events_need_a_key(client) -> None:
    assert (await client.get("/v1/events")).status_code == 401
