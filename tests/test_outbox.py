"""The outbox against real local receivers: retries with backoff, isolation between channels, failure kept."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import make_settings
from tests.receivers import HttpReceiver
from tracker.bootstrap import Container, build
from tracker.clock import FakeClock
from tracker.db.tables import notifications
from tracker.providers.simulators import CryptoPocketSimulator, HostRouter

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def slack() -> Iterator[HttpReceiver]:
    server = HttpReceiver().start()
    yield server
    server.stop()


@pytest.fixture
def hook() -> Iterator[HttpReceiver]:
    server = HttpReceiver().start()
    yield server
    server.stop()


def build_app(database_url: str, clock: FakeClock, pocket: CryptoPocketSimulator, **channels: Any) -> Container:
    settings = make_settings(
        database_url, cryptopocket_base_url=CryptoPocketSimulator.api_base_url,
        cryptopocket_api_key="sim-cryptopocket-key", cryptopocket_api_secret="sim-cryptopocket-secret",
        rate_limits={}, poll_interval=timedelta(hours=24), **channels)
    # Real HTTP to the receivers; the simulator only answers the tracker's polls.
    import httpx

    class Split(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.sim = HostRouter.of(pocket)
            self.net = httpx.AsyncHTTPTransport()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.host.endswith(".sim"):
                return await self.sim.handle_async_request(request)
            return await self.net.handle_async_request(request)

    return build(settings, clock, transport=Split())


async def raise_two_alerts(app: Container, clock: FakeClock, pocket: CryptoPocketSimulator) -> None:
    for user in ("usr_a", "usr_b"):
        pocket.add_customer(user, "processing")
        app.customers.register({"provider": "cryptopocket", "provider_customer_id": user,
                                "customer_type": "individual"})
    await app.poller.tick()
    await app.poller.drain()
    clock.advance(timedelta(hours=2))
    await app.escalator.tick()


def rows(app: Container) -> list[Any]:
    with app.engine.connect() as conn:
        return list(conn.execute(select(notifications).order_by(notifications.c.id)))


async def deliver(app: Container) -> None:
    await app.outbox.tick()
    await app.outbox.drain()


async def test_500s_for_a_while_then_200_delivers_everything(database_url, clock, slack) -> None:
    pocket = CryptoPocketSimulator(clock=clock)
    slack.statuses = [500, 500, 500, 500, 500, 200]
    app = build_app(database_url, clock, pocket, alert_slack_url=f"{slack.url}/hook")
    try:
        await raise_two_alerts(app, clock, pocket)
        for _ in range(40):
            await deliver(app)
            clock.advance(timedelta(seconds=30))
        states = [(r.state, r.attempts) for r in rows(app)]
        assert [s for s, _ in states] == ["sent", "sent"]
        assert sum(a for _, a in states) == 7  # 5 failures spread over both, then one success each
        keys = [r.headers.get("content-type") for r in slack.received]
        assert len(keys) == 7
        delivered = {r.body for r in slack.received[-2:]}
        assert len(delivered) == 2
    finally:
        await app.http.aclose()
        app.engine.dispose()


async def test_a_failing_channel_never_delays_the_others(database_url, clock, slack, hook) -> None:
    pocket = CryptoPocketSimulator(clock=clock)
    slack.statuses = [503]
    app = build_app(database_url, clock, pocket, alert_slack_url=f"{slack.url}/hook",
                    alert_webhook_url=f"{hook.url}/hook", alert_webhook_secret=WHSEC)
    try:
        await raise_two_alerts(app, clock, pocket)
        await deliver(app)
        by_channel = {(r.channel, r.state) for r in rows(app)}
        assert ("webhook", "sent") in by_channel
        assert ("slack", "pending") in by_channel
        assert len(hook.received) == 2
    finally:
        await app.http.aclose()
        app.engine.dispose()


async def test_a_notice_that_keeps_failing_is_marked_failed_and_visible(database_url, clock, slack) -> None:
    pocket = CryptoPocketSimulator(clock=clock)
    slack.statuses = [500]
    app = build_app(database_url, clock, pocket, alert_slack_url=f"{slack.url}/hook")
    try:
        await raise_two_alerts(app, clock, pocket)
        for _ in range(30):
            await deliver(app)
            clock.advance(timedelta(minutes=15))
        assert {r.state for r in rows(app)} == {"failed"}
        assert all(r.attempts == app.outbox.max_attempts for r in rows(app))
        text = app.metrics.render().decode()
        assert 'tracker_notifications_total{channel="slack",result="failed"} 2.0' in text
        from tracker.web.alerts_api import _list

        listed = _list(app.engine, None, 10, None)
        assert all(a["notifications"][0]["state"] == "failed" for a in listed)
        assert "HTTP 500" in listed[0]["notifications"][0]["last_error"]
    finally:
        await app.http.aclose()
        app.engine.dispose()


async def test_a_refusing_channel_fails_at_once(database_url, clock, slack) -> None:
    pocket = CryptoPocketSimulator(clock=clock)
    slack.statuses = [404]
    app = build_app(database_url, clock, pocket, alert_slack_url=f"{slack.url}/hook")
    try:
        await raise_two_alerts(app, clock, pocket)
        await deliver(app)
        assert [(r.state, r.attempts) for r in rows(app)] == [("failed", 1), ("failed", 1)]
    finally:
        await app.http.aclose()
        app.engine.dispose()


async def test_without_channels_alerts_are_logged_and_kept(database_url, clock, caplog) -> None:
    pocket = CryptoPocketSimulator(clock=clock)
    app = build_app(database_url, clock, pocket)
    try:
        await raise_two_alerts(app, clock, pocket)
        with caplog.at_level("WARNING", logger="tracker.alerts"):
            await deliver(app)
        assert [(r.channel, r.state) for r in rows(app)] == [("log", "sent"), ("log", "sent")]
        assert sum("ALERT trigger" in record.message for record in caplog.records) == 2
    finally:
        await app.http.aclose()
        app.engine.dispose()
