"""Slack incoming webhook: a readable message with what to do."""

from __future__ import annotations

import httpx

from tracker.alerting.base import Notice, pending_words, post_json

ICONS = {"critical": ":rotating_light:", "warning": ":warning:", "info": ":white_check_mark:"}


def message(notice: Notice) -> dict[str, object]:
    lines = [f"{ICONS.get(notice.severity, '')} *{notice.title}*".strip()]
    facts = [f"*Provider:* {notice.provider}"]
    if notice.customer_id is not None:
        facts.append(f"*Customer:* {notice.provider_customer_id} (tracker id {notice.customer_id}"
                     + (f", reference {notice.reference})" if notice.reference else ")"))
        if notice.pending_seconds is not None:
            facts.append(f"*Pending for:* {pending_words(notice.pending_seconds)}")
    lines.append(" · ".join(facts))
    if notice.advice:
        lines.append(f"*What to do:* {notice.advice}")
    text = "\n".join(lines)
    return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}


class SlackChannel:
    name = "slack"

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.client = client
        self.url = url

    async def send(self, notice: Notice) -> None:
        await post_json(self.client, self.url, self.name, json=message(notice))
