"""The composition root: the one place concrete parts are chosen and wired together."""

from __future__ import annotations

import logging
import os
import secrets
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import Engine, text
from starlette.applications import Starlette

import tracker
from tracker.apikeys import ApiKeys
from tracker.clock import Clock, SystemClock
from tracker.customers import Customers
from tracker.db import migrate, queries
from tracker.db.engine import check_engine, make_engine
from tracker.domain.polling import PollPolicy
from tracker.domain.provider_health import BreakerPolicy, spacing
from tracker.ingest import GroupCommitter, Ingestor
from tracker.metrics import Metrics
from tracker.poller import Poller, ProviderPlan
from tracker.providers.base import Adapter
from tracker.providers.blaaiz import BlaaizAdapter
from tracker.providers.connectfi import ConnectFiAdapter
from tracker.providers.cryptopocket import CryptoPocketAdapter
from tracker.scheduler import Ticker
from tracker.settings import Settings

log = logging.getLogger("tracker")


@dataclass
class Container:
    settings: Settings
    clock: Clock
    engine: Engine
    metrics: Metrics
    ingestor: Ingestor
    committer: GroupCommitter
    customers: Customers
    api_keys: ApiKeys
    http: httpx.AsyncClient
    poller: Poller
    head: str | None = field(default=None)
    ticker: Ticker | None = field(default=None)

    def start(self) -> None:
        self.committer.start()

    def stop(self) -> None:
        self.committer.stop()

    async def start_worker(self) -> None:
        """Start the scheduler on the running loop (``tracker worker``, and ``tracker serve`` by default)."""
        self.ticker = Ticker(self.settings.tick, {"poll": self.poller.tick})
        self.ticker.start()

    async def stop_worker(self) -> None:
        if self.ticker is not None:
            self.ticker.stop()
            self.ticker = None
        await self.poller.drain()
        await self.http.aclose()

    def readiness_problems(self) -> list[str]:
        problems = []
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            current = migrate.current_revision(self.engine)
            if current != self.head:
                problems.append(f"database schema is at {current}, code expects {self.head}; run tracker db upgrade")
        except Exception as exc:
            problems.append(f"database unreachable: {type(exc).__name__}")
        return problems

    def summary(self) -> tuple[list[Any], list[Any]]:
        with self.engine.connect() as conn:
            return queries.count_customers_by_state(conn), queries.oldest_pending(conn)

    def customer_counts(self) -> list[tuple[str, str, str, int]]:
        with self.engine.connect() as conn:
            return [(r.provider, r.state, r.tier, r.n) for r in queries.count_customers_by_state(conn)]


def poll_policy(settings: Settings) -> PollPolicy:
    return PollPolicy(interval=settings.poll_interval, awaiting_interval=settings.awaiting_poll_interval,
                      reconcile_after=settings.reconcile_after,
                      thresholds=(settings.overdue_after, settings.critical_after))


def adapters(settings: Settings, http: httpx.AsyncClient, clock: Clock) -> dict[str, Adapter]:
    """The providers this deployment can poll: those whose credentials are configured."""
    found: dict[str, Adapter] = {}
    if settings.blaaiz_client_id and settings.blaaiz_client_secret:
        found["blaaiz"] = BlaaizAdapter(http, clock, settings.blaaiz_base_url, settings.blaaiz_client_id,
                                        settings.blaaiz_client_secret)
    if settings.connectfi_base_url and settings.connectfi_login and settings.connectfi_password:
        found["connectfi"] = ConnectFiAdapter(http, clock, settings.connectfi_base_url, settings.connectfi_login,
                                              settings.connectfi_password)
    if settings.cryptopocket_api_key and settings.cryptopocket_api_secret:
        found["cryptopocket"] = CryptoPocketAdapter(http, clock, settings.cryptopocket_base_url,
                                                    settings.cryptopocket_api_key, settings.cryptopocket_api_secret)
    return found


def build(settings: Settings, clock: Clock | None = None, engine: Engine | None = None,
          transport: httpx.AsyncBaseTransport | None = None) -> Container:
    """Wire the parts. ``transport`` replaces the network for provider calls (tests: simulators, MockTransport)."""
    clock = clock or SystemClock()
    engine = engine or make_engine(settings.database_url)
    metrics = Metrics()
    policy = poll_policy(settings)
    ingestor = Ingestor(engine, clock, metrics)
    http = httpx.AsyncClient(transport=transport, timeout=settings.poll_timeout.total_seconds(),
                             headers={"user-agent": f"tracker/{tracker.__version__}"})
    plans = {name: ProviderPlan(adapter, spacing(settings.rate_limits.get(name, ())),
                                settings.concurrency_for(name))
             for name, adapter in adapters(settings, http, clock).items()}
    owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
    # The breaker re-probes a failing provider at least every quarter interval, so after an outage every customer
    # is polled again within one interval.
    breaker = BreakerPolicy(max_cooldown=min(timedelta(minutes=5), settings.poll_interval / 4))
    poller = Poller(engine, clock, plans, policy, owner=owner, lease=settings.poll_lease,
                    horizon=max(settings.tick * 2, timedelta(seconds=1)), breaker=breaker, metrics=metrics)
    container = Container(
        settings=settings, clock=clock, engine=engine, metrics=metrics, ingestor=ingestor,
        committer=GroupCommitter(ingestor), customers=Customers(engine, clock, metrics, policy=policy),
        api_keys=ApiKeys(engine, clock, settings.api_key_cache_ttl), http=http, poller=poller,
        head=migrate.head_revision(),
    )
    metrics.add_gauges(container.customer_counts)
    return container


def prepare_database(container: Container, *, upgrade: bool) -> None:
    """Start-up checks: reachable, WAL on SQLite, schema at head (upgraded here when asked to)."""
    check_engine(container.engine)
    if upgrade:
        migrate.upgrade(container.engine)
    current = migrate.current_revision(container.engine)
    if current != container.head:
        log.warning("database schema is at %s, code expects %s: run `tracker db upgrade`", current, container.head)


def create_app(settings: Settings | None = None) -> Starlette:
    """For ``uvicorn tracker.bootstrap:create_app --factory``."""
    from tracker.web.app import create_app as make

    settings = settings or Settings.from_env()
    container = build(settings)
    prepare_database(container, upgrade=settings.is_sqlite)
    return make(container)
