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
        if not route.include_in_schema:  # the HTML dashboard's pages and forms (tracker.web.dashboard)
            continue
        path = route.path.replace(":int", "")
        assert path in document["paths"], path
        for method in route.methods or ():
            if method != "HEAD":
                assert method.lower() in document["paths"][path], (method, path)
    customer = document["components"]["schemas"]["Customer"]["properties"]
    assert {"id", "state", "tier", "pending_since", "pending_seconds", "version"} <= customer.keys()


def test_the_start_up_line_says_what_runs_and_never_a_secret(tmp_path) -> None:
    from datetime import timedelta

    from tests.conftest import make_settings
    from tracker.bootstrap import build
    from tracker.cli.common import describe
    from tracker.db.engine import make_engine

    settings = make_settings(
        f"sqlite:///{tmp_path / 'x.db'}", blaaiz_webhook_secrets=("whsec_topsecret",),
        alert_slack_url="https://hooks.slack.invalid/services/T0/B0/slacksecret",
        blaaiz_client_id="client-id-1", blaaiz_client_secret="clientsecret2",
        provider_critical_after={"cryptopocket": timedelta(hours=8)})
    engine = make_engine("postgresql://tracker:hunter2@127.0.0.1:1/tracker")  # never connected to
    container = build(settings, engine=engine)
    try:
        line = describe(container)
    finally:
        engine.dispose()
    assert "webhooks accepted from blaaiz" in line
    assert "polling blaaiz" in line
    assert "overdue after 2h, critical after 5h (cryptopocket 2h/8h)" in line
    assert "alerts to slack" in line
    assert "postgresql+psycopg://tracker:***@127.0.0.1:1/tracker" in line
    for secret in ("hunter2", "whsec_topsecret", "slacksecret", "clientsecret2", "hooks.slack"):
        assert secret not in line
