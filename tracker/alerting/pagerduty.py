"""PagerDuty Events API v2: ``trigger`` then ``resolve``, ``dedup_key`` = the alert's key, severity by tier."""

from __future__ import annotations

import httpx

from tracker.alerting.base import Notice, post_json


class PagerDutyChannel:
    name = "pagerduty"

    def __init__(self, client: httpx.AsyncClient, routing_key: str,
                 url: str = "https://events.pagerduty.com/v2/enqueue") -> None:
        self.client = client
        self.routing_key = routing_key
        self.url = url

    def event(self, notice: Notice) -> dict[str, object]:
        if notice.action == "resolve":
            return {"routing_key": self.routing_key, "event_action": "resolve", "dedup_key": notice.alert_key}
        return {
            "routing_key": self.routing_key, "event_action": "trigger", "dedup_key": notice.alert_key,
            "payload": {
                "summary": notice.title[:1024], "source": "tracker", "severity": notice.severity,
                "component": notice.provider, "group": "kyc", "class": notice.kind,
                "custom_details": {"advice": notice.advice, "customer_id": notice.customer_id,
                                   "provider_customer_id": notice.provider_customer_id,
                                   "reference": notice.reference, "pending_seconds": notice.pending_seconds,
                                   "notice": notice.key},
            },
        }

    async def send(self, notice: Notice) -> None:
        await post_json(self.client, self.url, self.name, json=self.event(notice), ok=(200, 201, 202))
