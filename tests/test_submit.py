"""Submit for every provider: /submit (and a connectFi upload) starts the clock with source ``api`` and has the
provider polled at the next tick; its answer then moves the customer as the lifecycle says."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from tests.simulated import key, registered
from tracker.db.tables import history


async def tick(container) -> None:
    await container.poller.tick()
    await container.poller.drain()


async def test_connectfi_submit_starts_the_clock_and_its_data_request_needs_action(api, polled, clock, simulators
                                                                                   ) -> None:
    simulators["connectfi"].add_application("app_sub", "cf_sub", "waiting_review")
    writer = key(polled, "write")
    created = await api.post("/v1/customers", headers=writer, json={
        "provider": "connectfi", "provider_customer_id": "cf_sub", "customer_type": "individual",
        "application_id": "app_sub"})
    customer = created.json()
    clock.advance(timedelta(minutes=1))
    submitted = await api.post(f"/v1/customers/{customer['id']}/submit", headers=writer)
    assert submitted.status_code == 200, submitted.text
    body = submitted.json()
    assert (body["state"], body["pending_since"]) == ("pending", clock.now().isoformat().replace("+00:00", "Z"))
    assert body["next_poll_at"] == body["pending_since"]  # polled at once

    simulators["connectfi"].set_status("app_sub", "data_request")
    await tick(polled)
    after = (await api.get(f"/v1/customers/{customer['id']}", headers=writer)).json()
    assert (after["state"], after["provider_status"]) == ("needs_action", "data_request")
    with polled.engine.connect() as conn:
        moves = conn.execute(select(history.c.to_state, history.c.source, history.c.actor)
                             .where(history.c.customer_id == customer["id"]).order_by(history.c.id)).all()
    assert [(m.to_state, m.source) for m in moves] == [("pending", "api"), ("needs_action", "poll")]
    assert moves[0].actor == "submit"


async def test_a_connectfi_upload_submits_the_application(api, polled, clock, simulators) -> None:
    simulators["connectfi"].add_application("app_up", "cf_up", "waiting_review")
    writer = key(polled, "write")
    customer = (await api.post("/v1/customers", headers=writer, json={
        "provider": "connectfi", "provider_customer_id": "cf_up", "customer_type": "individual",
        "application_id": "app_up"})).json()
    uploaded = await api.post(f"/v1/customers/{customer['id']}/uploads", headers=writer,
                              json={"slot": "passport", "file_id": "file_1"})
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["state"] == "pending"
    second = await api.post(f"/v1/customers/{customer['id']}/uploads", headers=writer,
                            json={"slot": "utility", "file_id": "file_2"})
    assert second.json()["version"] == uploaded.json()["version"]  # one review, however many documents
    await tick(polled)
    assert (await api.get(f"/v1/customers/{customer['id']}", headers=writer)).json()["state"] == "pending"


async def test_cryptopocket_submit_then_its_decision_by_poll(api, polled, clock, simulators) -> None:
    simulators["cryptopocket"].add_customer("usr_sub", "processing")
    customer = await registered(api, polled, "cryptopocket", "usr_sub")
    writer = key(polled, "write")
    submitted = await api.post(f"/v1/customers/{customer['id']}/submit", headers=writer)
    assert submitted.json()["state"] == "pending"
    simulators["cryptopocket"].set_status("usr_sub", "fail")
    await tick(polled)
    assert (await api.get(f"/v1/customers/{customer['id']}", headers=writer)).json()["state"] == "rejected"


async def test_connectfi_submit_without_an_application_id_says_it_cannot_be_polled(api, polled, simulators) -> None:
    customer = await registered(api, polled, "connectfi", "cf_noapp")
    response = await api.post(f"/v1/customers/{customer['id']}/submit", headers=key(polled, "write"))
    assert response.status_code == 200
    assert response.json()["state"] == "pending"
    assert "application_id" in response.json()["warnings"][0]
    assert response.json()["next_poll_at"] is None
