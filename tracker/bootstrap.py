"""The composition root: the one place concrete parts are chosen and wired together."""

from __future__ import annotations

import asyncio
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
from tracker.alerting.base import Channel
from tracker.alerting.email import EmailChannel
from tracker.alerting.log import LogChannel
from tracker.alerting.pagerduty import PagerDutyChannel
from tracker.alerting.slack import SlackChannel
from tracker.alerting.webhook import SignedWebhookChannel
from tracker.alerts import AlertSettings
from tracker.apikeys import ApiKeys
from tracker.changes import ChangeHub
from tracker.clock import Clock, SystemClock
from tracker.customers import Customers
from tracker.db import alert_queries, migrate, queries
from tracker.db.engine import check_engine, make_engine
from tracker.domain.escalation import EscalationPolicy
from tracker.domain.lifecycle import PROVIDERS
from tracker.domain.polling import PollPolicy
from tracker.domain.provider_health import BreakerPolicy, spacing
from tracker.errors import SchemaNotReady
from tracker.escalation import Escalator
from tracker.inbox.applier import Applier
from tracker.inbox.lease import Lease
from tracker.inbox.writer import InboxWriter
from tracker.metrics import Metrics
from tracker.outbox import Outbox
from tracker.poller import Poller, ProviderPlan
from tracker.providers.base import Adapter
from tracker.providers.blaaiz import BlaaizAdapter
from tracker.providers.connectfi import ConnectFiAdapter
from tracker.providers.cryptopocket import CryptoPocketAdapter
from tracker.scheduler import Ticker
from tracker.settings import Settings
from tracker.transitions.plans import Rules
from tracker.transitions.writes import Writes

log = logging.getLogger("tracker")


@dataclass
class Container:
    settings: Settings
    clock: Clock
    engine: Engine
    metrics: Metrics
    inbox: InboxWriter
    applier: Applier
    writes: Writes
    customers: Customers
    api_keys: ApiKeys
    http: httpx.AsyncClient
    poller: Poller
    escalator: Escalator
    outbox: Outbox
    changes: ChangeHub
    head: str | None = field(default=None)
    ticker: Ticker | None = field(default=None)

    def start(self) -> None:
        """Store and apply webhooks (every process does both)."""
        self.applier.start()
        self.inbox.start()

    def stop(self) -> None:
        self.inbox.stop()
        self.applier.stop()

    async def start_worker(self) -> None:
        """Start the scheduler on the running loop (``tracker worker``, and ``tracker serve`` by default)."""
        self.ticker = Ticker(self.settings.tick, {"poll": self.poller.tick, "escalate": self.escalator.tick,
                                                  "deliver": self.outbox.tick, "prune": self._prune})
        self.ticker.start()

    async def _prune(self) -> None:
        await asyncio.to_thread(self.changes.prune)

    async def stop_worker(self) -> None:
        if self.ticker is not None:
            self.ticker.stop()
            self.ticker = None
        await self.poller.drain()
        await self.outbox.drain()
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
            return queries.count_customers_by_state(conn), queries.oldest_pending(conn, PROVIDERS)

    def provider_health(self) -> dict[str, dict[str, Any]]:
        """Per provider: polled or not, circuit breaker, Retry-After hold, last error and when, the last poll
        answered and the last webhook applied (each to within 30 s)."""
        with self.engine.connect() as conn:
            states = {row.provider: row for row in queries.provider_states(conn)}
        health: dict[str, dict[str, Any]] = {}
        for provider in PROVIDERS:
            row = states.get(provider)
            health[provider] = {
                "polled": provider in self.poller.plans,
                "breaker": row.breaker_state if row else "closed",
                "breaker_open_until": row.breaker_open_until if row else None,
                "blocked_until": row.blocked_until if row else None,
                "last_error": row.last_error if row else None,
                "last_error_at": row.last_error_at if row else None,
                "last_success_at": row.last_success_at if row else None,
                "last_webhook_at": row.last_webhook_at if row else None,
            }
        return health

    def breaker_states(self) -> list[tuple[str, str, int]]:
        health = self.provider_health()
        return [(provider, state, int(info["breaker"] == state)) for provider, info in health.items()
                for state in ("closed", "open", "half_open")]

    def notification_counts(self) -> list[tuple[str, str, int]]:
        with self.engine.connect() as conn:
            return [(row.channel, row.state, row.n) for row in alert_queries.count_notifications(conn)]

    def customer_counts(self) -> list[tuple[str, str, str, int]]:
        with self.engine.connect() as conn:
            return [(r.provider, r.state, r.tier, r.n) for r in queries.count_customers_by_state(conn)]


def poll_policy(settings: Settings) -> PollPolicy:
    return PollPolicy(interval=settings.poll_interval, awaiting_interval=settings.awaiting_poll_interval,
                      reconcile_after=settings.reconcile_after,
                      thresholds=(settings.overdue_after, settings.critical_after))


def escalation_policy(settings: Settings) -> EscalationPolicy:
    per_provider = {p: (settings.overdue_for(p), settings.critical_for(p)) for p in PROVIDERS}
    return EscalationPolicy(settings.overdue_after, settings.critical_after, per_provider,
                            settings.blaaiz_business_overdue_days)


def channels(settings: Settings, http: httpx.AsyncClient, clock: Clock) -> dict[str, Channel]:
    found: dict[str, Channel] = {}
    if settings.alert_slack_url:
        found["slack"] = SlackChannel(http, settings.alert_slack_url)
    if settings.alert_webhook_url and settings.alert_webhook_secret:
        found["webhook"] = SignedWebhookChannel(http, settings.alert_webhook_url, settings.alert_webhook_secret, clock)
    if settings.alert_pagerduty_routing_key:
        found["pagerduty"] = PagerDutyChannel(http, settings.alert_pagerduty_routing_key,
                                              settings.alert_pagerduty_url)
    if settings.alert_smtp_url and settings.alert_email_to:
        found["email"] = EmailChannel(settings.alert_smtp_url, settings.alert_email_to)
    return found or {"log": LogChannel()}


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
    http = httpx.AsyncClient(transport=transport, timeout=settings.poll_timeout.total_seconds(),
                             headers={"user-agent": f"tracker/{tracker.__version__}"})
    plans = {name: ProviderPlan(adapter, spacing(settings.rate_limits.get(name, ())),
                                settings.concurrency_for(name))
             for name, adapter in adapters(settings, http, clock).items()}
    owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
    alert_settings = AlertSettings(
        channels=settings.alert_channels(),
        critical_repeat=settings.critical_repeat if settings.critical_repeat > timedelta(0) else None,
        incident_threshold=settings.incident_threshold, incident_window=settings.incident_window)
    escalation = escalation_policy(settings)
    rules = Rules(escalation=escalation, polling=policy, clock_skew=settings.clock_skew)
    writes = Writes(alert_settings, metrics)
    changes = ChangeHub(engine, clock)
    writes.committed.append(changes.poke)
    applier = Applier(engine, clock, writes, rules, Lease(engine), metrics=metrics)
    # The breaker re-probes a failing provider at least every quarter interval, so after an outage every customer
    # is polled again within one interval.
    breaker = BreakerPolicy(max_cooldown=min(timedelta(minutes=5), settings.poll_interval / 4))
    poller = Poller(engine, clock, plans, policy, owner=owner, lease=settings.poll_lease,
                    horizon=max(settings.tick * 2, timedelta(seconds=1)), breaker=breaker, metrics=metrics,
                    writes=writes, rules=rules)
    container = Container(
        settings=settings, clock=clock, engine=engine, metrics=metrics,
        inbox=InboxWriter(engine, metrics, on_stored=applier.wake, others_apply=lambda: not applier.lease.held()),
        applier=applier, writes=writes,
        customers=Customers(engine, clock, writes, rules),
        api_keys=ApiKeys(engine, clock, settings.api_key_cache_ttl), http=http, poller=poller,
        escalator=Escalator(engine, clock, escalation, alert_settings, owner=owner, writes=writes, rules=rules,
                            lease=settings.poll_lease, checker=poller, metrics=metrics),
        outbox=Outbox(engine, clock, channels(settings, http, clock), owner=owner, lease=settings.poll_lease,
                      metrics=metrics),
        changes=changes,
        head=migrate.head_revision(),
    )
    metrics.add_gauge("tracker_customers", "Tracked customers by provider, state and tier",
                      ["provider", "state", "tier"], container.customer_counts)
    metrics.add_gauge("tracker_provider_breaker", "Circuit breaker state per provider (1 = current state)",
                      ["provider", "state"], container.breaker_states)
    metrics.add_gauge("tracker_notifications_by_state", "Outbox notifications by channel and state",
                      ["channel", "state"], container.notification_counts)
    return container


def database(settings: Settings) -> Engine:
    """The engine the settings name, its schema ready (commands that need only the database)."""
    engine = make_engine(settings.database_url)
    try:
        require_schema(engine, settings)
    except BaseException:
        engine.dispose()
        raise
    return engine


def require_schema(engine: Engine, settings: Settings) -> None:
    """What a command needs before it touches the tables. SQLite, the embedded default, is migrated here as
    ``tracker serve`` does; another database must be at head already, or the command stops with the fix."""
    if settings.is_sqlite:
        migrate.upgrade(engine)
        return
    current, head = migrate.current_revision(engine), migrate.head_revision()
    if current != head:
        where = engine.url.render_as_string(hide_password=True)
        raise SchemaNotReady(f"the database at {where} has schema {current or 'none (no tracker tables)'}, "
                             f"this tracker needs {head}: run `tracker db upgrade` first")


def upgrade_database(settings: Settings, revision: str = "head") -> str | None:
    """Apply the migrations up to ``revision``; the revision the database is then at."""
    engine = make_engine(settings.database_url)  # not ``database``: that wants the schema this creates
    try:
        migrate.upgrade(engine, revision)
        return migrate.current_revision(engine)
    finally:
        engine.dispose()


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
