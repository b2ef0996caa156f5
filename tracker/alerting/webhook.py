"""Generic JSON webhook signed per the Standard Webhooks spec (``webhook-id``, ``webhook-timestamp``,
``webhook-signature``), so any receiver can verify it with an off-the-shelf library."""

from __future__ import annotations

import json

import httpx
from standardwebhooks.webhooks import Webhook

from tracker.alerting.base import Notice, post_json
from tracker.clock import Clock


class SignedWebhookChannel:
    name = "webhook"

    def __init__(self, client: httpx.AsyncClient, url: str, secret: str, clock: Clock) -> None:
        self.client = client
        self.url = url
        self.signer = Webhook(secret)
        self.clock = clock

    async def send(self, notice: Notice) -> None:
        body = json.dumps(notice.as_json(), separators=(",", ":"))
        now = self.clock.now()
        headers = {
            "content-type": "application/json",
            "webhook-id": notice.key,  # the same on a redelivery: receivers de-duplicate on it
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self.signer.sign(notice.key, now, body),
        }
        await post_json(self.client, self.url, self.name, content=body.encode(), headers=headers)
