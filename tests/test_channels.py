"""Each alert channel against a real local receiver; the signed webhook verified by `standardwebhooks`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from email import message_from_bytes

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.receivers import HttpReceiver, SmtpReceiver
from tracker.alerting.base import DeliveryError, Notice
from tracker.alerting.email import EmailChannel
from tracker.alerting.pagerduty import PagerDutyChannel
from tracker.alerting.slack import SlackChannel
from tracker.alerting.webhook import SignedWebhookChannel
from tracker.clock import FakeClock

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # a test secret, not a real one
NOTICE = Notice(
    key="alert:7:trigger", alert_key="customer:42:attempt:1:critical", alert_id=7, action="trigger",
    kind="critical", severity="critical", title="Blaaiz verification pending 5 h: cus_abc",
    advice="E-mail Blaaiz support (support@blaaiz.com) with the customer id cus_abc.", provider="blaaiz",
    created_at=datetime(2026, 1, 5, 14, 0, tzinfo=UTC), customer_id=42, provider_customer_id="cus_abc",
    reference="user-9", pending_seconds=5 * 3600 + 60,
)


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    server = HttpReceiver().start()
    yield server
    server.stop()


async def test_slack_message_is_readable(receiver: HttpReceiver) -> None:
    async with httpx.AsyncClient() as client:
        await SlackChannel(client, f"{receiver.url}/services/T000/B000/XXXX").send(NOTICE)
    body = json.loads(receiver.received[0].body)
    text = body["text"]
    for words in ("blaaiz", "cus_abc", "tracker id 42", "reference user-9", "5 h 01 min", "E-mail Blaaiz support"):
        assert words in text


async def test_signed_webhook_verifies_with_the_standard_library(receiver: HttpReceiver) -> None:
    clock = FakeClock(datetime.now(UTC))
    async with httpx.AsyncClient() as client:
        await SignedWebhookChannel(client, f"{receiver.url}/hooks/tracker", SECRET, clock).send(NOTICE)
    got = receiver.received[0]
    payload = Webhook(SECRET).verify(got.body, got.headers)
    assert payload["id"] == NOTICE.key
    assert payload["alert"]["key"] == NOTICE.alert_key
    assert got.headers["webhook-id"] == NOTICE.key
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(got.body.replace(b"critical", b"warning"), got.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB").verify(got.body, got.headers)


async def test_pagerduty_trigger_then_resolve(receiver: HttpReceiver) -> None:
    async with httpx.AsyncClient() as client:
        channel = PagerDutyChannel(client, "R0UT1NGKEY", f"{receiver.url}/v2/enqueue")
        await channel.send(NOTICE)
        resolve = Notice(**{**NOTICE.__dict__, "key": "alert:7:resolve", "action": "resolve", "severity": "info"})
        await channel.send(resolve)
    trigger, resolved = (json.loads(r.body) for r in receiver.received)
    assert trigger["event_action"] == "trigger"
    assert trigger["dedup_key"] == NOTICE.alert_key
    assert trigger["payload"]["severity"] == "critical"
    assert trigger["payload"]["source"] == "tracker"
    assert resolved == {"routing_key": "R0UT1NGKEY", "event_action": "resolve", "dedup_key": NOTICE.alert_key}


async def test_http_failures_are_classified() -> None:
    server = HttpReceiver(statuses=[500, 429, 400]).start()
    try:
        async with httpx.AsyncClient() as client:
            channel = SlackChannel(client, f"{server.url}/hook")
            for retryable in (True, True, False):
                with pytest.raises(DeliveryError) as info:
                    await channel.send(NOTICE)
                assert info.value.retryable is retryable
            unreachable = SlackChannel(client, "http://127.0.0.1:9/hook")
            with pytest.raises(DeliveryError) as info:
                await unreachable.send(NOTICE)
            assert info.value.retryable
    finally:
        server.stop()


async def test_email_over_smtp() -> None:
    smtp = SmtpReceiver().start()
    try:
        await EmailChannel(smtp.url, "ops@example.invalid").send(NOTICE)
    finally:
        smtp.stop()
    envelope = smtp.mailbox.messages[0]
    assert envelope.rcpt_tos == ["ops@example.invalid"]
    message = message_from_bytes(envelope.content)
    assert message["Subject"] == f"[tracker] {NOTICE.title}"
    assert message["X-Tracker-Notice"] == NOTICE.key
    assert "E-mail Blaaiz support" in message.get_payload()


async def test_email_to_a_closed_port_is_retryable() -> None:
    with pytest.raises(DeliveryError) as info:
        await EmailChannel("smtp://127.0.0.1:9", "ops@example.invalid", timeout=2).send(NOTICE)
    assert info.value.retryable
