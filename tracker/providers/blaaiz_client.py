"""Blaaiz's API client (PROVIDERS.md, Blaaiz): OAuth client credentials and customer status reads, one
customer at a time or a page of a status list."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx

from tracker.clock import Clock
from tracker.domain.events import ParseError
from tracker.providers.base import (
    CustomerRef,
    ProviderError,
    StatusReport,
    TokenCache,
    json_body,
    status_error,
    transport_error,
)
from tracker.providers.blaaiz_status import NAME, map_status


class BlaaizAdapter:
    """Blaaiz API: OAuth client credentials (900 s tokens, renewed early), customer status reads."""

    name = NAME
    scope = "customer:read"
    # The lists a batch reconciliation reads: customers found there are still under review.
    in_review_statuses = ("PROCESSING", "PENDING")

    def __init__(self, client: httpx.AsyncClient, clock: Clock, base_url: str, client_id: str,
                 client_secret: str) -> None:
        self.client = client
        self.clock = clock
        self.base_url = base_url.rstrip("/")
        self._credentials = {"grant_type": "client_credentials", "client_id": client_id,
                             "client_secret": client_secret, "scope": self.scope}
        self.tokens = TokenCache(clock, self._fetch_token)
        self.rate_limit: dict[str, str] = {}

    async def _fetch_token(self) -> tuple[str, datetime]:
        try:
            response = await self.client.post(f"{self.base_url}/oauth/token", data=self._credentials)
        except httpx.HTTPError as exc:
            raise transport_error(NAME, exc) from None
        body = json_body(NAME, response)
        if response.status_code != 200:
            raise status_error(NAME, response, _message(body, "token refused"), self.clock.now())
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise ProviderError(NAME, "unexpected", "the token answer has no access_token")
        try:
            lifetime = float(body.get("expires_in", 900))
        except (TypeError, ValueError):
            lifetime = 900.0
        return token, self.clock.now() + timedelta(seconds=lifetime)

    async def _get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """GET with the bearer token; one re-authentication and one retry on 401, never a loop."""
        for attempt in (1, 2):
            token = await self.tokens.get()
            try:
                response = await self.client.get(f"{self.base_url}{path}", params=params,
                                                 headers={"authorization": f"Bearer {token}",
                                                          "accept": "application/json"})
            except httpx.HTTPError as exc:
                raise transport_error(NAME, exc) from None
            self.rate_limit = {k: v for k, v in response.headers.items() if k.lower().startswith("x-ratelimit-")}
            if response.status_code == 401 and attempt == 1:
                self.tokens.invalidate(token)
                continue
            body = json_body(NAME, response)
            if response.status_code != 200 or (isinstance(body, dict) and body.get("status") is False):
                raise status_error(NAME, response, _message(body, "request refused"), self.clock.now())
            return body
        raise AssertionError("unreachable")

    async def fetch_status(self, customer: CustomerRef) -> StatusReport:
        body = await self._get(f"/api/external/customer/{quote(customer.provider_customer_id, safe='')}")
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            raise ProviderError(NAME, "unexpected", "the customer answer has no data object")
        try:
            report = map_status(data)
        except ParseError as exc:
            raise ProviderError(NAME, "unexpected", str(exc)) from None
        if not report.provider_customer_id:
            report = replace(report, provider_customer_id=customer.provider_customer_id)
        return report

    async def list_page(self, verification_status: str, customer_type: str, page: int) -> tuple[list[StatusReport],
                                                                                               bool]:
        """One page (15, newest first) of customers with a given status; returns the reports and whether more
        pages follow."""
        body = await self._get("/api/external/customer", {
            "verification_status": verification_status, "type": customer_type, "paginate": "true",
            "page": str(page)})
        data = body.get("data") if isinstance(body, dict) else None
        if isinstance(data, list):  # not paginated after all
            items, more = data, False
        elif isinstance(data, dict) and isinstance(data.get("data"), list):
            items = data["data"]
            last = data.get("last_page")
            more = bool(data.get("next_page_url")) or (isinstance(last, int) and page < last)
        else:
            raise ProviderError(NAME, "unexpected", "the list answer has no data")
        reports = []
        for item in items:
            if isinstance(item, dict) and item.get("id") is not None:
                try:
                    reports.append(map_status(item))
                except ParseError:
                    continue
        return reports, more


def _message(body: Any, default: str) -> str:
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return default
