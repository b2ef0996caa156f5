"""What the tracker makes of the scenario, as a reader of its API sees it: one line per alert opened,
acknowledged or resolved, and per change of a provider's breaker (``GET /v1/alerts``, ``GET /v1/summary``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Watcher:
    api: httpx.AsyncClient
    say: Callable[[str], None]
    interval: float
    alerts: dict[int, str] = field(default_factory=dict)  # alert id -> state last seen
    failing: set[str] = field(default_factory=set)  # providers whose breaker was last seen not closed

    async def run(self) -> None:
        while True:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
                await self.look()  # else the tracker is starting or stopping: look again
            await asyncio.sleep(self.interval)

    async def look(self) -> None:
        alerts = await self._get("/v1/alerts?limit=200")
        for alert in reversed(alerts.get("items", [])):  # oldest first
            self._alert(alert)
        summary = await self._get("/v1/summary")
        for provider, info in summary.get("providers", {}).items():
            self._health(provider, info.get("health", {}))

    async def _get(self, path: str) -> dict[str, Any]:
        response = await self.api.get(path)
        response.raise_for_status()
        body = response.json()
        return body if isinstance(body, dict) else {}

    def _alert(self, alert: dict[str, Any]) -> None:
        alert_id, state, kind = int(alert["id"]), str(alert["state"]), str(alert["kind"])
        seen = self.alerts.get(alert_id)
        if seen == state:
            return
        self.alerts[alert_id] = state
        what = "opened" if seen is None and state == "open" else state
        customer = f"customer #{alert['customer_id']}" if alert.get("customer_id") else "provider-wide"
        self.say(f"ALERT #{alert_id} {kind} {what}: {alert.get('provider')} {customer}")

    def _health(self, provider: str, health: dict[str, Any]) -> None:
        """Only the moves between closed and not (open and half open alternate while a provider is down)."""
        breaker = str(health.get("breaker") or "closed")
        if (breaker != "closed") == (provider in self.failing):
            return
        if breaker == "closed":
            self.failing.discard(provider)
            self.say(f"{provider} breaker closed: the provider answers again")
        else:
            self.failing.add(provider)
            self.say(f"{provider} breaker {breaker} (last error: {health.get('last_error')})")
