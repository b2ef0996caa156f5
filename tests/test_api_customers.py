"""The customer API: register, uploads, submit, reads, ETags, pagination, auth."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

from tests.conftest import blaaiz_event, post_blaaiz, register


async def test_register_is_idempotent(client, write_key) -> None:
    body = {"provider": "blaaiz", "provider_customer_id": "cus_1", "customer_type": "individual", "reference": "u1"}
    first = await client.post("/v1/customers", json=body, headers=write_key)
    second = await client.post("/v1/customers", json=body, headers=write_key)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    data = first.json()
    for field in ("id", "provider", "provider_customer_id", "reference", "customer_type", "state", "provider_status",
                  "tier", "pending_since", "pending_seconds", "decided_at", "rejection_reason", "attempts",
                  "updated_at", "version"):
        assert field in data
    assert data["state"] == "awaiting_documents"


async def test_register_conflicting_type_is_409(client, write_key) -> None:
    await register(client, write_key, "cus_1")
    response = await client.post("/v1/customers", headers=write_key, json={
        "provider": "blaaiz", "provider_customer_id": "cus_1", "customer_type": "business"})
    assert response.status_code == 409
    assert "registered already with customer_type" in response.json()["error"]["message"]


@pytest.mark.parametrize(("body", "words"), [
    ({"provider": "acme", "provider_customer_id": "x", "customer_type": "individual"}, "provider must be one of"),
    ({"provider": "blaaiz", "customer_type": "individual"}, "provider_customer_id is required"),
    ({"provider": "blaaiz", "provider_customer_id": "x", "customer_type": "robot"}, "customer_type must be"),
    ({"provider": "blaaiz", "provider_customer_id": "a b", "customer_type": "individual"}, "provider_customer_id must"),
    ({"provider": "blaaiz", "provider_customer_id": "x", "customer_type": "individual", "email": "e"},
     "unknown field(s): email"),
])
async def test_register_bad_input(client, write_key, body: dict[str, Any], words: str) -> None:
    response = await client.post("/v1/customers", json=body, headers=write_key)
    assert response.status_code == 422
    assert words in response.json()["error"]["message"]


async def test_register_not_json(client, write_key) -> None:
    response = await client.post("/v1/customers", content=b"provider=blaaiz", headers={
        **write_key, "content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415
    response = await client.post("/v1/customers", content=b"{oops", headers={
        **write_key, "content-type": "application/json"})
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]


async def test_register_with_an_escaped_lone_surrogate_is_a_400_not_a_500(client, write_key, engine) -> None:
    body = b'{"provider": "blaaiz", "provider_customer_id": "cus_\\ud800", "customer_type": "individual"}'
    response = await client.post("/v1/customers", content=body, headers={
        **write_key, "content-type": "application/json"})
    assert response.status_code == 400
    assert "unpaired UTF-16 surrogate" in response.json()["error"]["message"]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM customers")).scalar_one() == 0


async def test_identity_upload_starts_review(client, clock, write_key) -> None:
    customer = await register(client, write_key)
    proof = await client.post(f"/v1/customers/{customer['id']}/uploads", headers=write_key,
                              json={"slot": "proof_of_address_file", "file_id": "f1"})
    assert proof.json()["state"] == "awaiting_documents"
    clock.advance(timedelta(minutes=3))
    response = await client.post(f"/v1/customers/{customer['id']}/uploads", headers=write_key,
                                 json={"slot": "id_file", "file_id": "f2", "document_type": "passport"})
    assert response.status_code == 200
    data = response.json()
    assert data["state"] == "pending"
    assert data["pending_since"] == "2026-01-05T09:03:00Z"
    assert data["attempts"] == 1


async def test_national_id_card_is_refused(client, write_key) -> None:
    customer = await register(client, write_key)
    response = await client.post(f"/v1/customers/{customer['id']}/uploads", headers=write_key,
                                 json={"slot": "id_file", "document_type": "id_card"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "document_not_accepted"
    assert "national ID cards are not accepted" in error["message"]
    assert "passport" in error["message"]


@pytest.mark.parametrize("document_type", ["drivers_license", "passport", "resident_permit"])
async def test_accepted_identity_documents(client, write_key, document_type: str) -> None:
    customer = await register(client, write_key)
    response = await client.post(f"/v1/customers/{customer['id']}/uploads", headers=write_key,
                                 json={"slot": "id_file", "document_type": document_type})
    assert response.json()["state"] == "pending"


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"slot": "selfie"}, 422, "slot must be one of"),
    ({"slot": "id_file"}, 422, "document_type is required"),
    ({}, 422, "slot is required"),
    ({"slot": "id_file", "document_type": "passport", "bytes": "..."}, 422, "unknown field(s): bytes"),
])
async def test_upload_bad_input(client, write_key, body, status, words) -> None:
    customer = await register(client, write_key)
    response = await client.post(f"/v1/customers/{customer['id']}/uploads", headers=write_key, json=body)
    assert response.status_code == status
    assert words in response.json()["error"]["message"]


async def test_upload_while_review_runs_is_refused(client, write_key) -> None:
    customer = await register(client, write_key)
    await client.post(f"/v1/customers/{customer['id']}/submit", headers=write_key)
    response = await client.post(f"/v1/customers/{customer['id']}/uploads", headers=write_key,
                                 json={"slot": "id_file", "document_type": "passport"})
    assert response.status_code == 409
    assert "while a review runs" in response.json()["error"]["message"]


async def test_business_upload_through_individual_slot_is_flagged_and_never_starts_clock(client, write_key) -> None:
    customer = await register(client, write_key, customer_type="business")
    response = await client.post(f"/v1/customers/{customer['id']}/uploads", headers=write_key,
                                 json={"slot": "id_file", "document_type": "passport"})
    assert response.status_code == 200
    data = response.json()
    assert data["state"] == "awaiting_documents"
    assert data["pending_since"] is None
    assert "business_upload_via_individual_slot" in data["flags"]
    assert any("business endpoints" in w for w in data["warnings"])
    submitted = await client.post(f"/v1/customers/{customer['id']}/submit", headers=write_key)
    assert submitted.json()["state"] == "pending"


async def test_submit_is_idempotent_and_refused_when_verified(client, clock, write_key) -> None:
    customer = await register(client, write_key)
    first = await client.post(f"/v1/customers/{customer['id']}/submit", headers=write_key)
    clock.advance(timedelta(minutes=5))
    again = await client.post(f"/v1/customers/{customer['id']}/submit", headers=write_key)
    assert again.status_code == 200
    assert again.json()["pending_since"] == first.json()["pending_since"]
    assert again.json()["version"] == first.json()["version"]
    await post_blaaiz(client, clock, blaaiz_event("cus_1", "VERIFIED"))
    response = await client.post(f"/v1/customers/{customer['id']}/submit", headers=write_key)
    assert response.status_code == 409


async def test_resubmission_after_rejection_counts_attempts_and_warns(client, clock, write_key) -> None:
    customer = await register(client, write_key)
    cid = customer["id"]
    for attempt in range(3):
        response = await client.post(f"/v1/customers/{cid}/submit", headers=write_key)
        assert response.json()["attempts"] == attempt + 1
        assert bool(response.json().get("warnings")) is (attempt == 2)
        clock.advance(timedelta(minutes=10))
        await post_blaaiz(client, clock, blaaiz_event("cus_1", "REJECTED", comment=f"try {attempt}",
                                                       updated_at=clock.now().isoformat()))
    response = await client.post(f"/v1/customers/{cid}/submit", headers=write_key)
    assert "blacklists" in response.json()["warnings"][0]


async def test_unknown_customer_is_404(client, read_key, write_key) -> None:
    assert (await client.get("/v1/customers/999", headers=read_key)).status_code == 404
    response = await client.post("/v1/customers/999/submit", headers=write_key)
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "no customer with id 999"


async def test_etag_and_304(client, clock, write_key, read_key) -> None:
    customer = await register(client, write_key)
    url = f"/v1/customers/{customer['id']}"
    first = await client.get(url, headers=read_key)
    etag = first.headers["etag"]
    clock.advance(timedelta(hours=1))  # the clock alone does not change the ETag
    cached = await client.get(url, headers={**read_key, "if-none-match": etag})
    assert cached.status_code == 304
    assert cached.content == b""
    await client.post(f"{url}/submit", headers=write_key)
    changed = await client.get(url, headers={**read_key, "if-none-match": etag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag


async def test_a_webhook_that_moves_nothing_still_says_when_the_provider_was_heard(client, clock, write_key,
                                                                                     read_key) -> None:
    customer = await register(client, write_key)
    url = f"/v1/customers/{customer['id']}"
    assert customer["last_signal_at"] is None
    await client.post(f"{url}/submit", headers=write_key)
    submitted = await client.get(url, headers=read_key)
    assert submitted.json()["last_signal_at"] is None  # our own submission is not the provider speaking
    clock.advance(timedelta(minutes=30))
    moved = await post_blaaiz(client, clock, blaaiz_event("cus_1", "PROCESSING", updated_at="2026-01-05T09:30:00Z"))
    assert moved.status_code == 200
    first = await client.get(url, headers=read_key)
    clock.advance(timedelta(minutes=40))
    # the same status again, later: moves nothing (no version, no updated_at) but the provider was heard
    await post_blaaiz(client, clock, blaaiz_event("cus_1", "PROCESSING", updated_at="2026-01-05T10:10:00Z"))
    again = await client.get(url, headers={**read_key, "if-none-match": first.headers["etag"]})
    assert again.status_code == 200
    assert again.headers["etag"] != first.headers["etag"]
    body, before = again.json(), first.json()
    assert (body["version"], body["updated_at"]) == (before["version"], before["updated_at"])
    assert body["last_signal_at"] == clock.now().isoformat().replace("+00:00", "Z")
    assert before["last_signal_at"] != body["last_signal_at"]
    cached = await client.get(url, headers={**read_key, "if-none-match": again.headers["etag"]})
    assert cached.status_code == 304


async def test_list_filters_and_cursor_pagination(client, clock, write_key, read_key) -> None:
    ids = []
    for n in range(7):
        clock.advance(timedelta(minutes=1))
        provider = "blaaiz" if n % 2 == 0 else "cryptopocket"
        ids.append((await register(client, write_key, f"cus_{n}", provider=provider, reference=f"ref{n % 3}"))["id"])
    clock.advance(timedelta(minutes=1))
    await client.post(f"/v1/customers/{ids[0]}/submit", headers=write_key)

    seen: list[int] = []
    cursor = None
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/customers", params=params, headers=read_key)).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [ids[0], *reversed(ids[1:])]  # newest change first, each exactly once

    async def listed(**params: str) -> list[int]:
        response = await client.get("/v1/customers", params=params, headers=read_key)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]]

    assert await listed(provider="cryptopocket") == [ids[5], ids[3], ids[1]]
    assert await listed(state="pending") == [ids[0]]
    assert await listed(reference="ref1") == [ids[4], ids[1]]
    assert await listed(provider_customer_id="cus_2") == [ids[2]]
    assert await listed(tier="none", state="pending") == [ids[0]]
    clock.advance(timedelta(hours=2))
    assert await listed(pending_longer_than="2h") == [ids[0]]
    assert await listed(pending_longer_than="3h") == []


@pytest.mark.parametrize(("params", "words"), [
    ({"state": "lost"}, "state must be one of"),
    ({"provider": "acme"}, "provider must be one of"),
    ({"tier": "red"}, "tier must be one of"),
    ({"limit": "0"}, "limit must be between"),
    ({"limit": "many"}, "whole number"),
    ({"cursor": "!!!"}, "cursor is not one"),
    ({"pending_longer_than": "soon"}, "not a duration"),
    ({"colour": "red"}, "unknown parameter 'colour'; this list takes"),
])
async def test_list_bad_params(client, read_key, params, words) -> None:
    response = await client.get("/v1/customers", params=params, headers=read_key)
    assert response.status_code == 400
    assert words in response.json()["error"]["message"]


async def test_list_etag(client, write_key, read_key) -> None:
    await register(client, write_key)
    first = await client.get("/v1/customers", headers=read_key)
    again = await client.get("/v1/customers", headers={**read_key, "if-none-match": first.headers["etag"]})
    assert again.status_code == 304
    await register(client, write_key, "cus_2")
    changed = await client.get("/v1/customers", headers={**read_key, "if-none-match": first.headers["etag"]})
    assert changed.status_code == 200


async def test_history_lists_transitions_and_events(client, clock, write_key, read_key) -> None:
    customer = await register(client, write_key)
    await client.post(f"/v1/customers/{customer['id']}/uploads", headers=write_key,
                      json={"slot": "id_file", "document_type": "passport", "file_id": "f1"})
    await post_blaaiz(client, clock, blaaiz_event("cus_1", "VERIFIED", event_id="evt_v"))
    data = (await client.get(f"/v1/customers/{customer['id']}/history", headers=read_key)).json()
    assert [(t["from"], t["to"], t["trigger"], t["source"]) for t in data["transitions"]] == [
        ("awaiting_documents", "pending", "submitted", "api"),
        ("pending", "verified", "provider_approved", "webhook"),
    ]
    assert data["transitions"][1]["event"] == data["events"][0]["id"]
    assert data["events"][0]["event_id"] == "evt_v"
    assert data["uploads"][0]["document_type"] == "passport"


# --- auth --------------------------------------------------------------------------------------------


async def test_no_key_is_401(client) -> None:
    response = await client.get("/v1/customers")
    assert response.status_code == 401
    assert "Authorization: Bearer" in response.json()["error"]["message"]


async def test_bad_key_is_401(client, read_key) -> None:
    response = await client.get("/v1/customers", headers={"authorization": "Bearer trk_00000000_nope"})
    assert response.status_code == 401
    tampered = read_key["authorization"][:-2] + "xx"
    assert (await client.get("/v1/customers", headers={"authorization": tampered})).status_code == 401


async def test_wrong_scope_is_403(client, read_key, write_key, admin_key) -> None:
    body = {"provider": "blaaiz", "provider_customer_id": "c", "customer_type": "individual"}
    response = await client.post("/v1/customers", json=body, headers=read_key)
    assert response.status_code == 403
    assert "needs write" in response.json()["error"]["message"]
    assert (await client.post("/v1/events/1/replay", headers=write_key)).status_code == 403
    assert (await client.post("/v1/customers", json=body, headers=admin_key)).status_code == 201


async def test_keys_are_stored_hashed(container, engine) -> None:
    from sqlalchemy import select

    from tracker.db.tables import api_keys

    key = container.api_keys.create("ops", "read")
    with engine.connect() as conn:
        row = conn.execute(select(api_keys)).one()
    assert key not in str(tuple(row))
    assert len(row.key_hash) == 64


async def test_replay_event_api(client, clock, admin_key) -> None:
    response = await post_blaaiz(client, clock, blaaiz_event("cus_1", "PROCESSING"))
    event = response.json()["event"]
    replayed = await client.post(f"/v1/events/{event}/replay", headers=admin_key)
    assert replayed.status_code == 200
    assert replayed.json()["outcome"] == "no_change"  # already pending
    assert (await client.post("/v1/events/999/replay", headers=admin_key)).status_code == 404


async def test_summary(client, clock, write_key, read_key) -> None:
    customer = await register(client, write_key)
    await client.post(f"/v1/customers/{customer['id']}/submit", headers=write_key)
    clock.advance(timedelta(minutes=30))
    data = (await client.get("/v1/summary", headers=read_key)).json()
    assert data["providers"]["blaaiz"]["states"] == {"pending": 1}
    assert data["providers"]["blaaiz"]["oldest_pending_seconds"] == 1800
