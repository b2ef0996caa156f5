"""Plays the scenario's steps: the providers through the simulators (their Python objects, in this process; their
webhooks are real signed HTTP deliveries to the tracker), the tracker only through its public HTTP API."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx

from tracker.demo import scenario
from tracker.demo.scenario import Acknowledge, Action, BadDelivery, Join, Outage, Says, Submit, Upload
from tracker.providers.simulators import BlaaizSimulator, ConnectFiSimulator, CryptoPocketSimulator

OUTAGE_STATUS = 503
ACK_PATIENCE = 12  # looks for the alert to acknowledge, a quarter of a second apart
OUTAGE_TIMES = 1_000_000  # every request until the outage ends
RETIRED_SECRET = "whsec_retired_demo_secret"  # noqa: S105 - a secret Blaaiz no longer signs with, to be refused


class StepFailed(Exception):
    """The tracker refused a call the step made (the demo prints it and plays on)."""


@dataclass
class Simulators:
    blaaiz: BlaaizSimulator
    connectfi: ConnectFiSimulator
    cryptopocket: CryptoPocketSimulator


@dataclass(frozen=True)
class Inbound:
    """Where the providers deliver to the tracker."""

    blaaiz: str
    connectfi: str  # the callback URL, with the tracker's path token
    cryptopocket: str


def application_of(who: str) -> str:
    """connectFi: the application id of the demo customer ``cf_cust_NN`` (``cf_app_NN``)."""
    return who.replace("_cust_", "_app_")


class Driver:
    def __init__(self, api: httpx.AsyncClient, push: httpx.AsyncClient, sims: Simulators, inbound: Inbound) -> None:
        self.api = api  # the tracker's base URL, with the demo's admin key
        self.push = push  # the providers' deliveries
        self.sims = sims
        self.inbound = inbound
        self.providers = scenario.providers()
        self.ids: dict[str, int] = {}  # provider customer id -> the tracker's customer id

    async def run(self, action: Action) -> str:
        """Do one step; what came of it, in a few words."""
        try:
            return await self._run(action)
        except StepFailed as exc:
            return f"refused: {exc}"
        except httpx.HTTPError as exc:
            return f"failed: {type(exc).__name__}: {exc}"

    async def _run(self, action: Action) -> str:
        if isinstance(action, Join):
            return await self._join(action)
        if isinstance(action, Upload):
            return await self._upload(action)
        if isinstance(action, Submit):
            return self._state(await self._call("POST", f"/v1/customers/{self.ids[action.who]}/submit"))
        if isinstance(action, Says):
            return await self._says(action)
        if isinstance(action, BadDelivery):
            return await self._bad(action)
        if isinstance(action, Outage):
            sim = getattr(self.sims, action.provider)
            if action.on:
                sim.fail(OUTAGE_TIMES, OUTAGE_STATUS)
            else:
                sim.clear_faults()
            return "simulator answers 503" if action.on else "simulator answers normally"
        if isinstance(action, Acknowledge):
            return await self._acknowledge(action)
        body = {"state": action.state, "reason": action.reason}
        return self._state(await self._call("POST", f"/v1/customers/{self.ids[action.who]}/state", body))

    # -- the integrator: the tracker's API -------------------------------------------------------------------

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        response = await self.api.request(method, path, json=body)
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if response.status_code >= 400:
            error = answer.get("error", {}) if isinstance(answer, dict) else {}
            raise StepFailed(f"HTTP {response.status_code} {error.get('code', '')}: {error.get('message', '')}")
        return answer if isinstance(answer, dict) else {}

    @staticmethod
    def _state(customer: dict[str, Any]) -> str:
        return f"#{customer.get('id')} {customer.get('state')}"

    async def _join(self, action: Join) -> str:
        body: dict[str, Any] = {"provider": action.provider, "provider_customer_id": action.who,
                                "customer_type": action.customer_type, "reference": f"demo-{action.who}"}
        if action.provider == "blaaiz":
            self.sims.blaaiz.add_customer(action.who, action.status or "PENDING", type=action.customer_type)
        elif action.provider == "connectfi":
            if action.application:
                application = application_of(action.who)
                self.sims.connectfi.add_application(application, action.who, action.status or "pending_documents",
                                                    webhook_url=self.inbound.connectfi)
                body["application_id"] = application
        else:
            self.sims.cryptopocket.add_customer(action.who, action.status or "unused")
        customer = await self._call("POST", "/v1/customers", body)
        self.ids[action.who] = int(customer["id"])
        return self._state(customer)

    async def _upload(self, action: Upload) -> str:
        customer_id = self.ids[action.who]
        body: dict[str, Any] = {"slot": action.slot, "file_id": f"file_{action.who}_{action.slot}"}
        if action.document_type:
            body["document_type"] = action.document_type
        customer = await self._call("POST", f"/v1/customers/{customer_id}/uploads", body)
        result = self._state(customer)
        if self.providers[action.who] == "blaaiz" and action.slot == "id_file" \
                and customer.get("customer_type") == "individual":
            # The file reaches Blaaiz, which starts its review and says so.
            response = await self.sims.blaaiz.send_webhook(self.push, self.inbound.blaaiz, action.who, "PROCESSING")
            result += f"; Blaaiz PROCESSING webhook {self._delivery(response)}"
        return result

    async def _acknowledge(self, action: Acknowledge) -> str:
        customer_id = self.ids[action.who]
        for _ in range(ACK_PATIENCE):  # the alert may be a tick or two late when time runs fast
            page = await self._call("GET", f"/v1/alerts?customer_id={customer_id}&state=open")
            for alert in page.get("items", []):
                if alert.get("kind") == action.kind:
                    acknowledged = await self._call("POST", f"/v1/alerts/{alert['id']}/acknowledge")
                    return f"alert #{acknowledged.get('id')} {acknowledged.get('state')}"
            await asyncio.sleep(0.25)
        return f"no open {action.kind} alert for #{customer_id}"

    # -- the providers: the simulators ------------------------------------------------------------------------

    async def _says(self, action: Says) -> str:
        provider, who = self.providers[action.who], action.who
        webhook = action.via == "webhook"
        if provider == "blaaiz":
            sim_b = self.sims.blaaiz
            extra: dict[str, Any] = {"comment": action.comment} if action.comment else {}
            if not webhook:
                sim_b.set_status(who, action.status, **extra)
                return "the next poll sees it"
            response = await sim_b.send_webhook(self.push, self.inbound.blaaiz, who, action.status, **extra)
        elif provider == "connectfi":
            sim_c = self.sims.connectfi
            application = application_of(who)
            sim_c.set_status(application, action.status, outcome=action.outcome)
            if not webhook:
                return "the next poll sees it"
            response = await sim_c.send_callback(self.push, self.inbound.connectfi, application)
        else:
            sim_p = self.sims.cryptopocket
            if not webhook:
                sim_p.set_status(who, action.status)
                return "the next poll sees it"
            response = await sim_p.send_webhook(self.push, self.inbound.cryptopocket, who, action.status)
        return f"delivered: {self._delivery(response)}"

    async def _bad(self, action: BadDelivery) -> str:
        who = action.who
        if action.fault == "unreadable_time":
            response = await self.sims.blaaiz.send_webhook(self.push, self.inbound.blaaiz, who, "PROCESSING",
                                                           apply=False, updated_at="2026-02-30T25:61:00Z")
        elif action.fault == "forged_signature":
            response = await self.sims.blaaiz.send_webhook(self.push, self.inbound.blaaiz, who, "VERIFIED",
                                                           apply=False, secret=RETIRED_SECRET)
        elif action.fault == "missing_application":
            response = await self.sims.connectfi.send_callback(self.push, self.inbound.connectfi,
                                                               application_of(who), applicationId=None)
        else:
            response = await self.sims.cryptopocket.send_webhook(self.push, self.inbound.cryptopocket, who,
                                                                 "valid", apply=False, kyc_status=None)
        return f"tracker answered {self._delivery(response)}"

    @staticmethod
    def _delivery(response: httpx.Response) -> str:
        try:
            body = response.json()
        except ValueError:
            return str(response.status_code)
        if not isinstance(body, dict):
            return str(response.status_code)
        said = body.get("status") or (body.get("error") or {}).get("code", "")
        return f"{response.status_code} {said}".strip()
