"""One transition path: the same move has the same effects whatever caused it.

A Blaaiz individual pending past 2 h (tier ``overdue``, its alert open and announced) is rejected, told in turn
by each source: a webhook (through the inbox and the applier), a poll, the check escalation makes before
raising a tier, a replay through the API, and a replay through the CLI. Each must leave the same history row,
the same customer (state, tier and deadline cleared, next poll, reason, count) and the same alert effects
(resolved, a resolve notice). Then the customer's next attempt, started by the API's submit or by the provider
reviewing again, gets the same new clock.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.conftest import AppliedTransport, blaaiz_event, close, make_settings, post_blaaiz
from tracker import cli
from tracker.bootstrap import Container, build
from tracker.clock import FakeClock
from tracker.db.tables import alerts, customers, history, notifications
from tracker.inbox.store import Delivery, store_now
from tracker.providers import blaaiz
from tracker.providers.simulators import BlaaizSimulator, HostRouter
from tracker.web.app import create_app

PCID = "cus_src"
REASON = "Cropped document"


@pytest.fixture
def sim(clock: FakeClock) -> BlaaizSimulator:
    simulator = BlaaizSimulator(clock=clock)
    simulator.limits = []
    return simulator


@pytest.fixture
async def tracked(database_url: str, clock: FakeClock, sim: BlaaizSimulator
                  ) -> AsyncIterator[tuple[Container, httpx.AsyncClient]]:
    """The tracker with Blaaiz pollable (the simulator), its applier not running on its own: each test says when
    stored events are applied."""
    settings = make_settings(database_url, blaaiz_base_url=BlaaizSimulator.default_base_url,
                             blaaiz_client_id="sim-blaaiz-client", blaaiz_client_secret="sim-blaaiz-secret",
                             rate_limits={}, poll_interval=timedelta(minutes=5))
    container = build(settings, clock, transport=HostRouter.of(sim))
    container.inbox.start()
    app = create_app(container)
    async with httpx.AsyncClient(transport=AppliedTransport(app, container), base_url="http://t") as http:
        yield container, http
    await close(container)


def writer(container: Container) -> dict[str, str]:
    # Not the ``write_key`` fixture: it starts a second tracker, whose applier would apply what these tests store.
    return {"authorization": f"Bearer {container.api_keys.create('test-write', 'write')}"}


async def escalated(container: Container, http: httpx.AsyncClient, clock: FakeClock, sim: BlaaizSimulator,
                    key: dict[str, str]) -> int:
    """Registered, submitted, pending 2 h 1 min: tier overdue, alert open."""
    sim.add_customer(PCID, "PENDING")
    created = (await http.post("/v1/customers", headers=key, json={
        "provider": "blaaiz", "provider_customer_id": PCID, "customer_type": "individual"})).json()
    assert (await http.post(f"/v1/customers/{created['id']}/submit", headers=key)).json()["state"] == "pending"
    clock.advance(timedelta(hours=2, minutes=1))
    await container.escalator.tick()
    assert effects(container, created["id"])["alerts"] == [("overdue", "open")]
    return int(created["id"])


def effects(container: Container, cid: int) -> dict[str, Any]:
    """What a move leaves, with times relative to the move's history row."""
    with container.engine.connect() as conn:
        row = conn.execute(select(customers).where(customers.c.id == cid)).one()
        moves = conn.execute(select(history).where(history.c.customer_id == cid).order_by(history.c.id)).all()
        raised = conn.execute(select(alerts.c.kind, alerts.c.state).where(alerts.c.customer_id == cid)
                              .order_by(alerts.c.id)).all()
        sent = conn.execute(select(notifications.c.action).order_by(notifications.c.id)).scalars().all()
    last = moves[-1]

    def since(value: Any) -> Any:
        return None if value is None else value - last.recorded_at

    return {
        "move": (last.from_state, last.to_state, last.trigger, last.comment),
        "customer": (row.state, row.tier, row.deadline_at, row.deadline_tier, row.rejection_reason, row.rejections,
                     row.attempts, since(row.next_poll_at)),
        "pending": since(row.pending_since), "deadline": since(row.deadline_at),
        "alerts": [tuple(a) for a in raised], "notices": list(sent),
    }


def stored_rejection(container: Container, clock: FakeClock) -> int:
    """The provider's REJECTED, stored in the inbox and not applied (as after a crash, or an error)."""
    payload = blaaiz_event(PCID, "REJECTED", comment=REASON, updated_at=clock.now().isoformat())
    body = json.dumps(payload).encode()
    (receipt,) = store_now(container.engine, [Delivery("blaaiz", clock.now(), body, {}, blaaiz.parse(payload))])
    return receipt.event_id


async def by_webhook(container: Container, http: httpx.AsyncClient, clock: FakeClock, sim: BlaaizSimulator,
                     key: dict[str, str]) -> None:
    payload = blaaiz_event(PCID, "REJECTED", comment=REASON, updated_at=clock.now().isoformat())
    assert (await post_blaaiz(http, clock, payload)).json()["status"] == "accepted"


async def by_poll(container: Container, http: httpx.AsyncClient, clock: FakeClock, sim: BlaaizSimulator,
                  key: dict[str, str]) -> None:
    sim.set_status(PCID, "REJECTED", comment=REASON)
    assert await container.poller.tick() == 1  # quiet for more than TRACKER_RECONCILE_AFTER: due
    await container.poller.drain()


async def by_escalation_check(container: Container, http: httpx.AsyncClient, clock: FakeClock,
                              sim: BlaaizSimulator, key: dict[str, str]) -> None:
    sim.set_status(PCID, "REJECTED", comment=REASON)
    clock.advance(timedelta(hours=3))  # the critical deadline: checked with Blaaiz before it is raised
    await container.escalator.tick()


async def by_replay_api(container: Container, http: httpx.AsyncClient, clock: FakeClock, sim: BlaaizSimulator,
                        key: dict[str, str]) -> None:
    admin = {"authorization": f"Bearer {container.api_keys.create('admin', 'admin')}"}
    answer = await http.post(f"/v1/events/{stored_rejection(container, clock)}/replay", headers=admin)
    assert answer.json()["outcome"] == "applied", answer.text


async def by_replay_cli(container: Container, http: httpx.AsyncClient, clock: FakeClock, sim: BlaaizSimulator,
                        key: dict[str, str]) -> None:
    stored_rejection(container, clock)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TRACKER_DATABASE_URL", container.settings.database_url)
        assert cli.main(["replay", "--outcome", "received"]) == 0


Source = Callable[[Container, httpx.AsyncClient, FakeClock, BlaaizSimulator, dict[str, str]], Awaitable[None]]
SOURCES: dict[str, Source] = {"webhook": by_webhook, "poll": by_poll, "escalation": by_escalation_check,
                              "replay-api": by_replay_api, "replay-cli": by_replay_cli}
# Blaaiz's status read carries no rejection reason for individuals (only webhooks' ``comment`` does).
TOLD_WHY = {"webhook", "replay-api", "replay-cli"}


@pytest.mark.parametrize("source", SOURCES)
async def test_a_rejection_has_the_same_effects_from_every_source(tracked, clock, sim, source) -> None:
    container, http = tracked
    write_key = writer(container)
    cid = await escalated(container, http, clock, sim, write_key)
    await SOURCES[source](container, http, clock, sim, write_key)
    reason = REASON if source in TOLD_WHY else None
    assert effects(container, cid) | {"pending": None, "deadline": None} == {
        "move": ("pending", "rejected", "provider_rejected", reason),
        "customer": ("rejected", "none", None, None, reason, 1, 1, None),  # Blaaiz: no polls while rejected
        "pending": None, "deadline": None,
        "alerts": [("overdue", "resolved")], "notices": ["trigger", "resolve"],
    }


async def resubmit_by_api(container: Container, http: httpx.AsyncClient, clock: FakeClock,
                          sim: BlaaizSimulator, key: dict[str, str], cid: int) -> None:
    assert (await http.post(f"/v1/customers/{cid}/submit", headers=key)).json()["state"] == "pending"


async def reviewing_by_webhook(container: Container, http: httpx.AsyncClient, clock: FakeClock,
                               sim: BlaaizSimulator, key: dict[str, str], cid: int) -> None:
    payload = blaaiz_event(PCID, "PROCESSING", old_status="REJECTED", updated_at=clock.now().isoformat())
    assert (await post_blaaiz(http, clock, payload)).json()["status"] == "accepted"


@pytest.mark.parametrize("start", [resubmit_by_api, reviewing_by_webhook], ids=["api", "webhook"])
async def test_a_new_attempt_gets_a_new_clock_from_every_source(tracked, clock, sim, start) -> None:
    container, http = tracked
    write_key = writer(container)
    cid = await escalated(container, http, clock, sim, write_key)
    await by_webhook(container, http, clock, sim, write_key)
    clock.advance(timedelta(minutes=7))
    await start(container, http, clock, sim, write_key, cid)
    found = effects(container, cid)
    assert found["move"][:2] == ("rejected", "pending")
    assert found["customer"][:7] == ("pending", "none", found["customer"][2], "overdue", None, 1, 2)
    assert (found["pending"], found["deadline"]) == (timedelta(0), timedelta(hours=2))
    assert found["alerts"] == [("overdue", "resolved")]  # the old attempt's; the new one has none yet


async def operator_by_api(container: Container, http: httpx.AsyncClient, cid: int) -> None:
    admin = {"authorization": f"Bearer {container.api_keys.create('ops-ana', 'admin')}"}
    answer = await http.post(f"/v1/customers/{cid}/state", headers=admin, json={"state": "rejected", "reason": REASON})
    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "rejected"


async def operator_by_cli(container: Container, http: httpx.AsyncClient, cid: int) -> None:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TRACKER_DATABASE_URL", container.settings.database_url)
        assert cli.main(["customers", "set-state", str(cid), "rejected", "--reason", REASON, "--by", "ops-ana"]) == 0


@pytest.mark.parametrize("operator", [operator_by_api, operator_by_cli], ids=["api", "cli"])
async def test_an_operator_rejection_has_the_same_effects_with_its_own_trigger(tracked, clock, sim,
                                                                             operator) -> None:
    """The operator's override goes through the same plan and writer: history row (source operator, who and
    why), tier and deadline cleared, alert resolved and announced. Unlike the provider's, it is not counted
    towards the provider's rejections."""
    container, http = tracked
    cid = await escalated(container, http, clock, sim, writer(container))
    await operator(container, http, cid)
    assert effects(container, cid) | {"pending": None, "deadline": None} == {
        "move": ("pending", "rejected", "operator_set", REASON),
        "customer": ("rejected", "none", None, None, REASON, 0, 1, None),
        "pending": None, "deadline": None,
        "alerts": [("overdue", "resolved")], "notices": ["trigger", "resolve"],
    }
    with container.engine.connect() as conn:
        last = conn.execute(select(history).where(history.c.customer_id == cid).order_by(history.c.id.desc())
                            ).first()
    assert last is not None
    assert (last.source, last.actor) == ("operator", "ops-ana")
