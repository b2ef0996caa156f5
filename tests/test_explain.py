"""GET /v1/customers/{id}/explain and ``tracker explain ID``: why a customer is in its state, from what the
tracker stored: each move with the lifecycle rule it applied, the events that moved nothing and why, the tier
and when the next one is due, the polls."""

from __future__ import annotations

import json
from datetime import timedelta

from tests.conftest import blaaiz_event, post_blaaiz, register
from tests.test_cli import run


async def test_the_explanation_walks_the_moves_and_the_events_that_moved_nothing(client, clock, write_key,
                                                                                 read_key) -> None:
    customer = await register(client, write_key, "cus_why")
    await client.post(f"/v1/customers/{customer['id']}/submit", headers=write_key)
    clock.advance(timedelta(minutes=20))
    await post_blaaiz(client, clock, blaaiz_event("cus_why", "VERIFIED", updated_at="2026-01-05T09:20:00Z"))
    clock.advance(timedelta(minutes=5))
    await post_blaaiz(client, clock, blaaiz_event("cus_why", "PROCESSING", updated_at="2026-01-05T09:10:00Z"))
    await post_blaaiz(client, clock, blaaiz_event("cus_why", "REJECTED", updated_at="2026-01-05T09:24:00Z"))

    response = await client.get(f"/v1/customers/{customer['id']}/explain", headers=read_key)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["state"] == "verified"
    moves = [step for step in body["steps"] if step["kind"] == "move"]
    assert [step["rule"] for step in moves] == ["awaiting_documents + submitted -> pending",
                                                "pending + provider_approved -> verified"]
    assert [step["source"] for step in moves] == ["api", "webhook"]
    unmoved = [(step["outcome"], step["provider_status"]) for step in body["steps"] if step["kind"] == "event"]
    assert unmoved == [("stale", "PROCESSING"), ("conflict", "REJECTED")]
    text = "\n".join(body["text"])
    assert text.startswith(f"Customer {customer['id']} (blaaiz cus_why) is verified since")
    assert "by the rule pending + provider_approved -> verified" in text
    assert "was stale" in text
    assert "contradicted a verified customer" in text
    assert body["tier"] == {"current": "none", "next": None, "next_at": None}


async def test_a_pending_customer_is_told_its_next_tier(client, clock, write_key, read_key) -> None:
    customer = await register(client, write_key, "cus_tier")
    await client.post(f"/v1/customers/{customer['id']}/submit", headers=write_key)
    clock.advance(timedelta(minutes=90))
    body = (await client.get(f"/v1/customers/{customer['id']}/explain", headers=read_key)).json()
    assert body["tier"]["next"] == "overdue"
    assert body["tier"]["next_at"] == (clock.now() + timedelta(minutes=30)).isoformat().replace("+00:00", "Z")
    assert any(line.startswith("Tier none; overdue is due at") for line in body["text"])
    assert "(1 h 30 min)" in body["text"][0]


async def test_explain_refuses_what_it_cannot_answer(client, read_key) -> None:
    assert (await client.get("/v1/customers/424242/explain", headers=read_key)).status_code == 404
    assert (await client.get("/v1/customers/99999999999999999999999/explain", headers=read_key)).status_code == 404
    assert (await client.get("/v1/customers/1/explain")).status_code == 401


async def test_the_cli_explains_in_words_and_as_data(client, clock, write_key, database_url) -> None:
    customer = await register(client, write_key, "cus_cli_why")
    await client.post(f"/v1/customers/{customer['id']}/submit", headers=write_key)
    words = run(["explain", str(customer["id"])], database_url)
    assert words.returncode == 0, words.stderr
    assert f"Customer {customer['id']} (blaaiz cus_cli_why) is pending" in words.stdout
    assert "awaiting_documents + submitted -> pending" in words.stdout
    data = run(["explain", str(customer["id"]), "--json"], database_url)
    assert json.loads(data.stdout)["state"] == "pending"
    missing = run(["explain", "424242"], database_url)
    assert missing.returncode == 1
    assert "no customer with id 424242" in missing.stderr
