"""Customers for the dashboard's tests, made through the application layer with a FakeClock: five pending at
three providers (one critical, two overdue, two on time), one awaiting documents, one verified by an operator,
the overdue and critical alerts the escalator raised on the way, and two Blaaiz webhooks that repeat a status
(they move nothing, but say when Blaaiz was last heard from)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from tracker.bootstrap import Container
from tracker.clock import FakeClock
from tracker.inbox.store import Delivery, store_now
from tracker.providers import blaaiz


@dataclass
class Seeded:
    ids: dict[str, int]  # by provider customer id

    def __getitem__(self, pcid: str) -> int:
        return self.ids[pcid]


def _customer(container: Container, provider: str, pcid: str, kind: str = "individual", **fields: Any) -> int:
    body = {"provider": provider, "provider_customer_id": pcid, "customer_type": kind, **fields}
    return int(container.customers.register(body).row.id)


def _escalate(container: Container, clock: FakeClock, delta: timedelta) -> None:
    clock.advance(delta)
    asyncio.run(container.escalator.tick())


def _blaaiz_webhook(container: Container, clock: FakeClock, pcid: str, status: str) -> None:
    """Blaaiz repeats a status, as its webhooks do: stored, then applied (it moves nothing, but it is heard)."""
    payload = {"event_type": "customer.status_changed", "customer_id": pcid, "old_status": status,
               "new_status": status, "comment": None, "updated_at": clock.now().isoformat().replace("+00:00", "Z"),
               "event_id": f"evt_seed_{pcid}_{int(clock.now().timestamp())}", "type": "customer"}
    store_now(container.engine, [Delivery("blaaiz", clock.now(), json.dumps(payload).encode(), {},
                                          blaaiz.parse(payload))])
    container.applier.drain()


def seed(container: Container, clock: FakeClock) -> Seeded:
    """From 09:00 to 14:12 UTC on a Monday: cus_1001 (Blaaiz) pending 5 h 12 min, critical; app_2001
    (connectFi) 4 h 12 min and usr_3001 (CryptoPocket) 3 h 12 min, overdue; usr_3002 1 h 27 min and the Blaaiz
    business cus_1002 3 h 12 min, on time."""
    ids: dict[str, int] = {}
    ids["cus_1001"] = _customer(container, "blaaiz", "cus_1001", reference="user-1001")
    container.customers.submit(ids["cus_1001"])
    _escalate(container, clock, timedelta(hours=1))
    ids["app_2001"] = _customer(container, "connectfi", "app_2001", application_id="APP-2001")
    container.customers.submit(ids["app_2001"])
    _escalate(container, clock, timedelta(hours=1))
    ids["usr_3001"] = _customer(container, "cryptopocket", "usr_3001", reference="user-3001")
    container.customers.submit(ids["usr_3001"])
    ids["cus_1002"] = _customer(container, "blaaiz", "cus_1002", "business")
    container.customers.submit(ids["cus_1002"])
    ids["cus_1003"] = _customer(container, "blaaiz", "cus_1003")
    container.customers.submit(ids["cus_1003"])
    container.customers.set_state(ids["cus_1003"], "verified", "documents checked by hand", "ops-seed")
    ids["usr_3003"] = _customer(container, "cryptopocket", "usr_3003")
    _escalate(container, clock, timedelta(hours=1, minutes=45))
    ids["usr_3002"] = _customer(container, "cryptopocket", "usr_3002")
    container.customers.submit(ids["usr_3002"])
    _escalate(container, clock, timedelta(minutes=30))
    _blaaiz_webhook(container, clock, "cus_1001", "PROCESSING")  # heard from 57 min before the end
    _escalate(container, clock, timedelta(minutes=30))
    _blaaiz_webhook(container, clock, "cus_1002", "PROCESSING")  # 27 min before
    _escalate(container, clock, timedelta(minutes=27))
    return Seeded(ids)
