"""POST /v1/customers/{id}/state: an operator's override (admin scope), checked like every other input."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from tests.conftest import blaaiz_event, post_blaaiz, register
from tracker.db.tables import history


async def test_an_operator_takes_a_verified_customer_back_to_pending(client, clock, container, write_key,
                                                                   admin_key) -> None:
    """Verified is final for providers, not for a person: the override moves it, with a new attempt's clock."""
    customer = await register(client, write_key, "cus_op")
    await client.post(f"/v1/customers/{customer['id']}/submit", headers=write_key)
    clock.advance(timedelta(hours=1))
    await post_blaaiz(client, clock, blaaiz_event("cus_op", "VERIFIED", updated_at="2026-01-05T09:30:00Z"))
    response = await client.post(f"/v1/customers/{customer['id']}/state", headers=admin_key,
                                 json={"state": "pending", "reason": "approved on a forged document"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["state"], body["pending_since"] is not None) == ("pending", True)
    again = await client.post(f"/v1/customers/{customer['id']}/state", headers=admin_key,
                              json={"state": "pending", "reason": "again"})
    assert again.status_code == 200
    assert again.json()["version"] == body["version"]
    assert "already pending" in " ".join(again.json().get("warnings", []))
    with container.engine.connect() as conn:
        moves = conn.execute(select(history.c.to_state, history.c.source, history.c.actor, history.c.comment)
                             .where(history.c.customer_id == customer["id"]).order_by(history.c.id)).all()
    assert moves[-1] == ("pending", "operator", "test-admin", "approved on a forged document")
    assert [m.to_state for m in moves] == ["pending", "verified", "pending"]


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"state": "approved", "reason": "x"}, 422, "state must be one of"),
    ({"state": "verified"}, 422, "reason is required"),
    ({"state": "verified", "reason": "   "}, 422, "reason is required"),
    ({"state": "verified", "reason": "x" * 501}, 422, "at most 500"),
    ({"state": "verified", "reason": "x", "by": "me"}, 400, "unknown field 'by'"),
    ({"state": ["verified"], "reason": "x"}, 422, "state must be one of"),
])
async def test_bad_set_state_requests_say_what_is_wrong_and_change_nothing(client, container, write_key, admin_key,
                                                                         body, status, message) -> None:
    customer = await register(client, write_key, "cus_bad")
    response = await client.post(f"/v1/customers/{customer['id']}/state", headers=admin_key, json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]
    got = await client.get(f"/v1/customers/{customer['id']}", headers=admin_key)
    assert (got.json()["state"], got.json()["version"]) == (customer["state"], customer["version"])


async def test_set_state_needs_an_admin_key_and_a_known_customer(client, write_key, admin_key) -> None:
    customer = await register(client, write_key, "cus_scope")
    body = {"state": "verified", "reason": "checked"}
    assert (await client.post(f"/v1/customers/{customer['id']}/state", headers=write_key, json=body)
            ).status_code == 403
    assert (await client.post(f"/v1/customers/{customer['id']}/state", json=body)).status_code == 401
    assert (await client.post("/v1/customers/424242/state", headers=admin_key, json=body)).status_code == 404
