"""The composition root: the one place concrete parts are chosen and wired together."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, text
from starlette.applications import Starlette

from tracker.apikeys import ApiKeys
from tracker.clock import Clock, SystemClock
from tracker.customers import Customers
from tracker.db import migrate, queries
from tracker.db.engine import check_engine, make_engine
from tracker.ingest import GroupCommitter, Ingestor
from tracker.metrics import Metrics
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
    head: str | None = field(default=None)

    def start(self) -> None:
        self.committer.start()

    def stop(self) -> None:
        self.committer.stop()

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


def build(settings: Settings, clock: Clock | None = None, engine: Engine | None = None) -> Container:
    clock = clock or SystemClock()
    engine = engine or make_engine(settings.database_url)
    metrics = Metrics()
    ingestor = Ingestor(engine, clock, metrics)
    container = Container(
        settings=settings, clock=clock, engine=engine, metrics=metrics, ingestor=ingestor,
        committer=GroupCommitter(ingestor), customers=Customers(engine, clock, metrics),
        api_keys=ApiKeys(engine, clock, settings.api_key_cache_ttl), head=migrate.head_revision(),
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
