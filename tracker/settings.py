"""Settings from the environment (prefix ``TRACKER_``), validated once at start-up.

A bad value raises ``SettingsError`` whose message is one line naming the setting; the CLI prints it and
exits. Unknown ``TRACKER_*`` names are refused too: a typo should not silently fall back to a default.
This module holds the settings, their defaults, the variable each is read from and the rules between them;
reading a single value (a duration, a URL, a budget) is ``setting_parsers``'s job.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from tracker import setting_parsers as parse
from tracker.domain.lifecycle import PROVIDERS
from tracker.errors import SettingsError

PREFIX = "TRACKER_"
MAX_WEBHOOK_BODY = 1024 * 1024

DEFAULT_RATE_LIMITS: dict[str, tuple[tuple[int, timedelta], ...]] = {
    # Blaaiz publishes its budget; the others do not, so a conservative default that settings can change.
    "blaaiz": ((120, timedelta(minutes=1)), (1500, timedelta(hours=1))),
    "connectfi": ((5, timedelta(seconds=1)),),
    "cryptopocket": ((5, timedelta(seconds=1)),),
}


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///./tracker.db"
    log_level: str = "INFO"
    log_format: str = "text"  # or json: one object per line
    access_log: bool = False
    metrics_port: int = 9464  # where tracker worker serves /metrics and /healthz; 0: not served
    blaaiz_webhook_secrets: tuple[str, ...] = ()
    blaaiz_webhook_tolerance: int = 300
    blaaiz_base_url: str = "https://api-dev.blaaiz.com"
    blaaiz_client_id: str | None = None
    blaaiz_client_secret: str | None = None
    connectfi_base_url: str | None = None
    connectfi_login: str | None = None
    connectfi_password: str | None = None
    connectfi_webhook_token: str | None = None
    cryptopocket_base_url: str = "https://sandbox.cryptopocket.io/api"
    cryptopocket_api_key: str | None = None
    cryptopocket_api_secret: str | None = None
    overdue_after: timedelta = timedelta(hours=2)
    critical_after: timedelta = timedelta(hours=5)
    provider_overdue_after: Mapping[str, timedelta] = field(default_factory=dict)
    provider_critical_after: Mapping[str, timedelta] = field(default_factory=dict)
    poll_interval: timedelta = timedelta(minutes=5)
    tick: timedelta = timedelta(seconds=1)
    awaiting_poll_interval: timedelta = timedelta(minutes=15)
    reconcile_after: timedelta = timedelta(minutes=10)
    critical_repeat: timedelta = timedelta(hours=1)
    clock_skew: timedelta = timedelta(minutes=5)
    stream_heartbeat: timedelta = timedelta(seconds=15)  # a comment line on idle streams, so proxies keep them
    alert_slack_url: str | None = None
    alert_webhook_url: str | None = None
    alert_webhook_secret: str | None = None
    alert_pagerduty_routing_key: str | None = None
    alert_pagerduty_url: str = "https://events.pagerduty.com/v2/enqueue"
    alert_smtp_url: str | None = None
    alert_email_to: str | None = None
    api_key_cache_ttl: timedelta = timedelta(seconds=30)
    incident_threshold: int = 10
    incident_window: timedelta = timedelta(minutes=10)
    blaaiz_business_overdue_days: int = 5
    poll_lease: timedelta = timedelta(seconds=60)
    poll_timeout: timedelta = timedelta(seconds=10)
    rate_limits: Mapping[str, tuple[tuple[int, timedelta], ...]] = field(
        default_factory=lambda: dict(DEFAULT_RATE_LIMITS))
    concurrency: Mapping[str, int] = field(default_factory=dict)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        overdue: dict[str, timedelta] = {}
        critical: dict[str, timedelta] = {}
        parsers: dict[str, Callable[[str], Any]] = {
            "DATABASE_URL": parse.database_url,
            "LOG_LEVEL": lambda value: parse.one_of("debug", "info", "warning", "error")(value).upper(),
            "LOG_FORMAT": parse.one_of("text", "json"),
            "ACCESS_LOG": parse.boolean,
            "METRICS_PORT": parse.port,
            "BLAAIZ_WEBHOOK_SECRETS": parse.secrets,
            "BLAAIZ_WEBHOOK_TOLERANCE": parse.seconds,
            "BLAAIZ_BASE_URL": parse.http_url,
            "BLAAIZ_CLIENT_ID": parse.text,
            "BLAAIZ_CLIENT_SECRET": parse.text,
            "CONNECTFI_BASE_URL": parse.http_url,
            "CONNECTFI_LOGIN": parse.text,
            "CONNECTFI_PASSWORD": parse.text,
            "CONNECTFI_WEBHOOK_TOKEN": parse.text,
            "CRYPTOPOCKET_BASE_URL": parse.http_url,
            "CRYPTOPOCKET_API_KEY": parse.text,
            "CRYPTOPOCKET_API_SECRET": parse.text,
            "OVERDUE_AFTER": parse.positive_duration,
            "CRITICAL_AFTER": parse.positive_duration,
            "POLL_INTERVAL": parse.positive_duration,
            "TICK": parse.positive_duration,
            "AWAITING_POLL_INTERVAL": parse.positive_duration,
            "RECONCILE_AFTER": parse.positive_duration,
            "CRITICAL_REPEAT": parse.duration,
            "CLOCK_SKEW": parse.positive_duration,
            "STREAM_HEARTBEAT": parse.positive_duration,
            "ALERT_SLACK_URL": parse.http_url,
            "ALERT_WEBHOOK_URL": parse.http_url,
            "ALERT_WEBHOOK_SECRET": parse.text,
            "ALERT_PAGERDUTY_ROUTING_KEY": parse.text,
            "ALERT_PAGERDUTY_URL": parse.http_url,
            "ALERT_SMTP_URL": parse.smtp_url,
            "ALERT_EMAIL_TO": parse.text,
            "API_KEY_CACHE_TTL": parse.duration,
            "POLL_LEASE": parse.positive_duration,
            "INCIDENT_THRESHOLD": parse.positive_int,
            "INCIDENT_WINDOW": parse.positive_duration,
            "BLAAIZ_BUSINESS_OVERDUE_DAYS": parse.positive_int,
            "POLL_TIMEOUT": parse.positive_duration,
        }
        per_provider = {f"{p.upper()}_{kind}": (p, kind) for p in PROVIDERS
                        for kind in ("OVERDUE_AFTER", "CRITICAL_AFTER", "RATE_LIMIT", "CONCURRENCY")}
        rate_limits = dict(DEFAULT_RATE_LIMITS)
        concurrency: dict[str, int] = {}
        for name, raw in sorted(env.items()):
            if not name.startswith(PREFIX):
                continue
            key = name[len(PREFIX):]
            try:
                if key in per_provider:
                    provider, kind = per_provider[key]
                    if kind == "RATE_LIMIT":
                        rate_limits[provider] = parse.rate_limits(raw)
                    elif kind == "CONCURRENCY":
                        concurrency[provider] = parse.positive_int(raw)
                    else:
                        target = overdue if kind == "OVERDUE_AFTER" else critical
                        target[provider] = parse.positive_duration(raw)
                elif key in parsers:
                    values[key.lower()] = parsers[key](raw)
                else:
                    raise SettingsError(f"{name} is not a setting tracker knows; remove it or fix its spelling")
            except ValueError as exc:
                raise SettingsError(f"{name}: {exc}") from None
        values["provider_overdue_after"] = overdue
        values["provider_critical_after"] = critical
        values["rate_limits"] = rate_limits
        values["concurrency"] = concurrency
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Cross-field rules."""
        for provider in PROVIDERS:
            overdue, critical = self.overdue_for(provider), self.critical_for(provider)
            if overdue >= critical:
                # Name the variables that gave these values: the provider's own, or else the general one.
                overdue_name = (f"TRACKER_{provider.upper()}_OVERDUE_AFTER" if provider in self.provider_overdue_after
                                else "TRACKER_OVERDUE_AFTER")
                critical_name = (f"TRACKER_{provider.upper()}_CRITICAL_AFTER"
                                 if provider in self.provider_critical_after else "TRACKER_CRITICAL_AFTER")
                raise SettingsError(f"{overdue_name} ({overdue}) must be shorter than {critical_name} ({critical}) "
                                    f"for {provider}")
        if self.alert_webhook_url and not self.alert_webhook_secret:
            raise SettingsError("TRACKER_ALERT_WEBHOOK_SECRET is required when TRACKER_ALERT_WEBHOOK_URL is set")
        if self.alert_webhook_secret and not self.alert_webhook_secret.startswith("whsec_"):
            raise SettingsError("TRACKER_ALERT_WEBHOOK_SECRET must start with whsec_ (Standard Webhooks format)")
        if self.alert_smtp_url and not self.alert_email_to:
            raise SettingsError("TRACKER_ALERT_EMAIL_TO is required when TRACKER_ALERT_SMTP_URL is set")

    def alert_channels(self) -> tuple[str, ...]:
        """The configured channels; with none, alerts are logged and stored."""
        channels = tuple(name for name, on in (
            ("slack", self.alert_slack_url), ("webhook", self.alert_webhook_url),
            ("pagerduty", self.alert_pagerduty_routing_key), ("email", self.alert_smtp_url)) if on)
        return channels or ("log",)

    def concurrency_for(self, provider: str) -> int:
        return self.concurrency.get(provider, 4)

    def overdue_for(self, provider: str) -> timedelta:
        return self.provider_overdue_after.get(provider, self.overdue_after)

    def critical_for(self, provider: str) -> timedelta:
        return self.provider_critical_after.get(provider, self.critical_after)
