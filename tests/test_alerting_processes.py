"""Escalation and alert delivery across real ``tracker worker`` processes.

1. Two workers share one PostgreSQL database: every (customer, attempt, tier) is alerted exactly once, within
   seconds of its threshold, with one outbox row per alert and one delivery per notice, across both workers.
2. ``kill -9`` of the worker after it has sent a notice and before it could mark it sent (the receiver kills it
   before answering), several times, with a supervisor restarting it: nothing is lost, and each crash costs at
   most one duplicate, which carries the same ``webhook-id`` (idempotency key) as the original.

Customers are Blaaiz individuals registered and submitted in the test process (so their deadlines are set at
submission); no Blaaiz credentials are configured, so nothing is polled and there is no check before an alert.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text
from standardwebhooks.webhooks import Webhook
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from tests.conftest import BACKEND, create_pg_database, drop_pg_database, make_settings, require_postgres
from tests.receivers import HttpReceiver, Received
from tracker.bootstrap import build
from tracker.db import migrate
from tracker.db.engine import make_engine
from tracker.db.tables import alerts, customers, notifications

pytestmark = [pytest.mark.slow]

WHSEC = "whsec_" + base64.b64encode(b"alerting-processes-test-secret-1").decode()
OVERDUE = timedelta(seconds=3)
CRITICAL = timedelta(seconds=6)
THRESHOLDS = {"overdue": OVERDUE, "critical": CRITICAL}
READY = "nothing to poll"  # the worker's start-up warning (no provider credentials), logged just before it ticks


def worker_env(database_url: str, receiver_url: str, **extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("TRACKER_")}
    env.update({
        "TRACKER_DATABASE_URL": database_url, "TRACKER_TICK": "0.2s",
        "TRACKER_OVERDUE_AFTER": "3s", "TRACKER_CRITICAL_AFTER": "6s", "TRACKER_CRITICAL_REPEAT": "0",
        "TRACKER_ALERT_WEBHOOK_URL": f"{receiver_url}/alerts", "TRACKER_ALERT_WEBHOOK_SECRET": WHSEC,
        "TRACKER_INCIDENT_THRESHOLD": "1000", "TRACKER_LOG_LEVEL": "warning", **extra,
    })
    return env


class Worker:
    """``tracker worker`` in a real process; its stderr goes to a file (readiness, and the story on failure)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> Worker:
        with self.log.open("ab") as err:
            self.process = subprocess.Popen([sys.executable, "-m", "tracker.cli", "worker"], env=self.env,
                                            stdout=subprocess.DEVNULL, stderr=err)
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_ready(self, timeout: float = 30) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.output()}")
            if READY in self.output():
                return
            time.sleep(0.05)
        raise RuntimeError(f"worker did not start in {timeout} s:\n{self.output()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def submit_customers(database_url: str, engine: Engine, count: int, prefix: str) -> list[int]:
    """Register and submit ``count`` Blaaiz individuals now (their review clocks start now)."""
    settings = make_settings(database_url, overdue_after=OVERDUE, critical_after=CRITICAL,
                             critical_repeat=timedelta(0), incident_threshold=1000)
    container = build(settings, engine=engine)
    try:
        ids = []
        for n in range(count):
            row = container.customers.register({"provider": "blaaiz", "provider_customer_id": f"{prefix}_{n}",
                                                "customer_type": "individual"}).row
            assert container.customers.submit(int(row.id)).row.state == "pending"
            ids.append(int(row.id))
        return ids
    finally:
        asyncio.run(container.http.aclose())


def all_rows(engine: Engine, table: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(table).order_by(table.c.id)))


def count(engine: Engine, table: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def verified(received: Received) -> dict[str, Any]:
    """The Standard Webhooks check any receiver would make; returns the payload."""
    payload: dict[str, Any] = Webhook(WHSEC).verify(received.body, received.headers)
    assert payload["id"] == received.headers["webhook-id"]
    return payload


# --- 1. two workers on PostgreSQL ----------------------------------------------------------------------------

CUSTOMERS = 40
# Instrumentation in the test's own database: every claim (a lease owner set on a deadline or a notice) is logged
# with its owner, so the test can see that both workers took part and that no row was claimed twice.
CLAIM_LOG = [
    "CREATE TABLE claim_log (what text NOT NULL, row_id bigint NOT NULL, owner text NOT NULL)",
    """CREATE FUNCTION log_claim() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        new_owner text := to_jsonb(NEW) ->> TG_ARGV[0];
        old_owner text := to_jsonb(OLD) ->> TG_ARGV[0];
    BEGIN
        IF new_owner IS NOT NULL AND new_owner IS DISTINCT FROM old_owner THEN
            INSERT INTO claim_log VALUES (TG_TABLE_NAME, NEW.id, new_owner);
        END IF;
        RETURN NEW;
    END $$""",
    "CREATE TRIGGER customers_claims AFTER UPDATE ON customers FOR EACH ROW "
    "EXECUTE FUNCTION log_claim('deadline_lease_owner')",
    "CREATE TRIGGER notifications_claims AFTER UPDATE ON notifications FOR EACH ROW "
    "EXECUTE FUNCTION log_claim('lease_owner')",
]


@pytest.mark.postgres
def test_two_workers_on_postgres_alert_each_threshold_exactly_once(tmp_path: Path) -> None:
    require_postgres()
    url = create_pg_database("tracker_alerting")
    engine = make_engine(url)
    receiver = HttpReceiver().start()
    workers: list[Worker] = []
    try:
        migrate.upgrade(engine)
        with engine.begin() as conn:
            for statement in CLAIM_LOG:
                conn.execute(text(statement))
        env = worker_env(url, receiver.url)
        workers = [Worker(env, tmp_path / f"worker{n}.log").start() for n in range(2)]
        for worker in workers:
            worker.wait_ready()
        ids = submit_customers(url, engine, CUSTOMERS, "cus_two")

        def story() -> str:
            return "\n".join(w.output() for w in workers)

        deadline = time.monotonic() + CRITICAL.total_seconds() + 20
        while count(engine, alerts) < 2 * CUSTOMERS and time.monotonic() < deadline:
            time.sleep(0.1)
        while (count(engine, notifications, notifications.c.state != "sent") or
               len(receiver.received) < 2 * CUSTOMERS) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # a duplicate in flight would land now
        assert all(w.process is not None and w.process.poll() is None for w in workers), story()

        # Exactly two alerts per customer, one per tier, each raised within 2 s of its threshold.
        pending_since = {row.id: row.pending_since for row in all_rows(engine, customers)}
        raised = all_rows(engine, alerts)
        tiers = defaultdict(list)
        for alert in raised:
            tiers[alert.customer_id].append(alert.kind)
        assert {cid: sorted(kinds) for cid, kinds in tiers.items()} == {
            cid: ["critical", "overdue"] for cid in ids}, story()
        late = {alert.key: alert.opened_at - (pending_since[alert.customer_id] + THRESHOLDS[alert.kind])
                for alert in raised}
        assert all(timedelta(0) <= delay <= timedelta(seconds=2) for delay in late.values()), (
            sorted(late.items(), key=lambda item: item[1])[-5:])
        assert {alert.key for alert in raised} == {f"customer:{cid}:attempt:1:{tier}" for cid in ids
                                                  for tier in THRESHOLDS}
        for row in all_rows(engine, customers):
            assert (row.tier, row.deadline_at) == ("critical", None)

        # One outbox row per alert, sent.
        rows = all_rows(engine, notifications)
        per_alert = Counter(row.alert_id for row in rows)
        assert per_alert == {alert.id: 1 for alert in raised}
        assert {(row.channel, row.action, row.state) for row in rows} == {("webhook", "trigger", "sent")}

        # Each notice reached the receiver exactly once (no duplicate across workers), verifiably signed.
        keys = Counter(r.headers["webhook-id"] for r in receiver.received)
        assert keys == {row.key: 1 for row in rows}, [key for key, n in keys.items() if n != 1]
        alert_keys = {alert.id: alert.key for alert in raised}
        for received in receiver.received:
            payload = verified(received)
            assert payload["alert"]["key"] == alert_keys[payload["alert"]["id"]]
            assert payload["action"] == "trigger"
        # Both workers claimed work; each deadline (two per customer) and each notice was claimed by one of them.
        with engine.connect() as conn:
            claims = list(conn.execute(text("SELECT what, row_id, owner FROM claim_log")))
        owners = {int(claim.owner.split(":")[1]) for claim in claims}
        assert owners == {w.pid for w in workers}, Counter(claim.owner for claim in claims)
        assert Counter((c.what, c.row_id) for c in claims) == {
            **{("customers", cid): 2 for cid in ids}, **{("notifications", row.id): 1 for row in rows}}
        share = Counter((claim.what, claim.owner.split(":")[1]) for claim in claims)
        print(f"claims per (table, worker pid): {dict(share)}")
        print(f"max lateness {max(late.values()).total_seconds():.2f} s over {len(raised)} alerts")
    finally:
        for worker in workers:
            worker.stop()
        receiver.stop()
        engine.dispose()
        drop_pg_database(url)


# --- 2. kill -9 between sending and marking sent -------------------------------------------------------------

KILLS = 3
KILL_CUSTOMERS = 6


def _dead(pid: int) -> bool:
    """Gone, or a zombie waiting for its parent (this process) to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


@dataclass
class KillingReceiver(HttpReceiver):
    """On its first ``kills`` deliveries (one per worker process), SIGKILLs the worker ``pid`` before answering:
    the worker has sent the notice but cannot mark it sent. Then it answers 200 like any receiver."""

    kills: int = 0
    pid: int | None = None
    killed: list[tuple[int, str]] = field(default_factory=list)  # (pid, webhook-id) of each fatal delivery

    async def _handle(self, request: Request) -> Response:
        try:
            body = await request.body()
        except ClientDisconnect:  # the sender died before the request was whole: not a delivery
            return Response(status_code=400)
        self.received.append(Received(request.url.path, dict(request.headers), body))
        pid = self.pid
        if pid is not None and len(self.killed) < self.kills and pid not in {p for p, _ in self.killed}:
            self.killed.append((pid, request.headers["webhook-id"]))
            os.kill(pid, signal.SIGKILL)
            for _ in range(200):  # answer only once it is certainly dead
                if _dead(pid):
                    break
                await asyncio.sleep(0.01)
        return Response("ok", status_code=200)


@pytest.fixture
def kill_database(tmp_path: Path) -> Iterator[str]:
    if BACKEND == "postgres":
        require_postgres()
        url = create_pg_database("tracker_alert_kill9")
        try:
            yield url
        finally:
            drop_pg_database(url)
    else:
        yield f"sqlite:///{tmp_path / 'tracker.db'}"


ON_BACKEND = [pytest.mark.postgres] if BACKEND == "postgres" else []


@pytest.mark.parametrize("backend", [pytest.param(BACKEND, marks=ON_BACKEND)])
def test_kill9_between_send_and_mark_loses_nothing_and_doubles_at_most_once_per_crash(
        backend: str, kill_database: str, tmp_path: Path) -> None:
    url = kill_database
    engine = make_engine(url)
    receiver = KillingReceiver(kills=KILLS)
    receiver.start()
    worker: Worker | None = None
    exits: list[int] = []
    logs = tmp_path / "worker.log"
    try:
        migrate.upgrade(engine)
        env = worker_env(url, receiver.url, TRACKER_POLL_LEASE="2s")
        worker = Worker(env, logs).start()
        receiver.pid = worker.pid
        worker.wait_ready()
        ids = submit_customers(url, engine, KILL_CUSTOMERS, "cus_kill")
        expected = 2 * len(ids)

        # The supervisor: restart the worker whenever it dies, until every notice is sent.
        deadline = time.monotonic() + CRITICAL.total_seconds() + 30
        while time.monotonic() < deadline:
            assert worker.process is not None
            code = worker.process.poll()
            if code is not None:
                exits.append(code)
                worker = Worker(env, logs).start()
                receiver.pid = worker.pid
            elif (count(engine, notifications) == expected
                  and count(engine, notifications, notifications.c.state == "sent") == expected):
                break
            time.sleep(0.05)
        time.sleep(0.5)  # a late duplicate would land now
        story = logs.read_text(errors="replace")

        assert len(receiver.killed) == KILLS, story
        assert exits == [-signal.SIGKILL] * KILLS, story
        rows = all_rows(engine, notifications)
        assert len(rows) == expected == count(engine, alerts), story
        assert {row.state for row in rows} == {"sent"}, [(r.key, r.state, r.attempts, r.last_error) for r in rows]

        # Every notice arrived; a notice's identity (alert, action) always came with one and the same webhook-id.
        by_notice: dict[tuple[int, str], list[str]] = defaultdict(list)
        for received in receiver.received:
            payload = verified(received)
            by_notice[(payload["alert"]["id"], payload["action"])].append(received.headers["webhook-id"])
        assert {ids_[0] for ids_ in by_notice.values()} == {row.key for row in rows}
        assert all(len(set(ids_)) == 1 for ids_ in by_notice.values()), by_notice
        duplicates = len(receiver.received) - len(by_notice)
        assert duplicates <= KILLS, Counter(r.headers["webhook-id"] for r in receiver.received)
        # The notice each crash interrupted was not lost: it came again after the lease, with the same key.
        again = Counter(r.headers["webhook-id"] for r in receiver.received)
        assert all(again[key] >= 2 for _, key in receiver.killed), (receiver.killed, again)
        print(f"{KILLS} crashes, {len(receiver.received)} deliveries of {len(rows)} notices, "
              f"{duplicates} duplicate(s)")
    finally:
        if worker is not None:
            worker.stop()
        receiver.stop()
        engine.dispose()
