"""Prometheus metrics: one registry per app instance, so tests and several apps in one process stay apart."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("tracker.metrics")


class _Callback(Collector):
    """Collects at scrape time; ``describe`` names the family without collecting (so no I/O at start-up)."""

    def __init__(self, collect: Callable[[], Iterable[Metric]], describe: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect
        self._describe = describe

    def collect(self) -> Iterable[Metric]:
        return self._collect()

    def describe(self) -> Iterable[Metric]:
        return self._describe()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.webhooks = Counter("tracker_webhooks", "Webhook deliveries by provider and outcome",
                                ["provider", "outcome"], registry=self.registry)
        self.transitions = Counter("tracker_transitions", "Lifecycle transitions applied",
                                   ["provider", "from_state", "to_state", "trigger", "source"],
                                   registry=self.registry)
        self.polls = Counter("tracker_polls", "Provider status polls by provider and result",
                             ["provider", "result"], registry=self.registry)
        self.unknown_status = Counter("tracker_unknown_status", "Undocumented provider status values seen",
                                      ["provider"], registry=self.registry)
        self.alerts = Counter("tracker_alerts", "Alerts raised by provider and kind", ["provider", "kind"],
                              registry=self.registry)
        self.notifications = Counter("tracker_notifications", "Notifications by channel and result",
                                     ["channel", "result"], registry=self.registry)
        self.ingest_batch = Histogram("tracker_inbox_batch_size", "Webhook deliveries stored together",
                                      buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=self.registry)
        self.applied = Counter("tracker_inbox_applied", "Stored events applied, by outcome", ["outcome"],
                               registry=self.registry)

    def add_gauge(self, name: str, documentation: str, labels: list[str],
                  read: Callable[[], Iterable[tuple[Any, ...]]]) -> None:
        """A gauge read from the database at scrape time: ``read`` yields (label values..., value) rows."""

        def family() -> GaugeMetricFamily:
            return GaugeMetricFamily(name, documentation, labels=labels)

        def collect() -> Iterable[Metric]:
            gauge = family()
            try:
                rows = list(read())
            except Exception:  # the database is down: the scrape still answers, without this family's samples
                log.warning("could not read %s for /metrics", name)
                rows = []
            for row in rows:
                gauge.add_metric([str(value) for value in row[:-1]], row[-1])
            yield gauge

        self.registry.register(_Callback(collect, lambda: [family()]))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe_transition(self, provider: str, before: str, after: str, trigger: str, source: str) -> None:
        self.transitions.labels(provider, before, after, trigger, source).inc()

    def observe_webhook(self, provider: str, outcome: str, count: int = 1) -> None:
        self.webhooks.labels(provider, outcome).inc(count)

