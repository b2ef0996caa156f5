"""Health, readiness, metrics, the OpenAPI document."""

from __future__ import annotations

from starlette.routing import Route

from tests.conftest import blaaiz_event, post_blaaiz, register
from tracker.web.app import create_app


async def test_healthz_and_readyz(client) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}


async def test_readyz_reports_schema_behind_head(client, container) -> None:
    container.head = "9999_future"
    ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert "tracker db upgrade" in ready.json()["problems"][0]


async def test_metrics(client, clock, write_key) -> None:
    customer = await register(client, write_key)
    await client.post(f"/v1/customers/{customer['id']}/submit", headers=write_key)
    await post_blaaiz(client, clock, blaaiz_event("cus_1", "VERIFIED", event_id="e1"))
    await post_blaaiz(client, clock, blaaiz_event("cus_1", "VERIFIED", event_id="e1"))
    text = (await client.get("/metrics")).text
    assert 'tracker_webhooks_total{outcome="accepted",provider="blaaiz"} 1.0' in text
    assert 'tracker_webhooks_total{outcome="duplicate",provider="blaaiz"} 1.0' in text
    assert ('tracker_transitions_total{from_state="pending",provider="blaaiz",source="webhook",'
            'to_state="verified",trigger="provider_approved"} 1.0') in text
    assert 'tracker_customers{provider="blaaiz",state="verified",tier="none"} 1.0' in text


async def test_unknown_route_is_json_404(client) -> None:
    response = await client.get("/nowhere")
    assert response.status_code == 404
    assert "openapi.json" in response.json()["error"]["message"]
    assert (await client.delete("/v1/customers")).status_code == 405


async def test_openapi_describes_every_route(client, container) -> None:
    document = (await client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    app = create_app(container)
    for route in app.routes:
        assert isinstance(route, Route)
        path = route.path.replace(":int", "")
        assert path in document["paths"], path
        for method in route.methods or ():
            if method != "HEAD":
                assert method.lower() in document["paths"][path], (method, path)
    customer = document["components"]["schemas"]["Customer"]["properties"]
    assert {"id", "state", "tier", "pending_since", "pending_seconds", "version"} <= customer.keys()
