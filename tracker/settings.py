"""Settings from the environment (prefix ``TRACKER_``), validated once at start-up.

A bad value raises ``SettingsError`` whose message is one line naming the setting; the CLI prints it and
exits. Unknown ``TRACKER_*`` names are refused too: a typo should not silently fall back to a default.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from tracker.domain.lifecycle import PROVIDERS
from tracker.durations import parse_duration
from tracker.errors import SettingsError

PREFIX = "TRACKER_"
MAX_WEBHOOK_BODY = 1024 * 1024


def _duration(value: str) -> timedelta:
    parsed = parse_duration(value)
    if parsed < timedelta(0):
        raise ValueError("must not be negative")
    return parsed


def _positive_duration(value: str) -> timedelta:
    parsed = _duration(value)
    if parsed <= timedelta(0):
        raise ValueError(f"{value!r} must be longer than zero")
    return parsed


def _seconds(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = int(_duration(value).total_seconds())
    if number < 0:
        raise ValueError(f"{value!r} must be zero (off) or a positive number of seconds")
    return number


def _database_url(value: str) -> str:
    scheme = urlsplit(value).scheme
    if scheme.startswith("sqlite") or scheme.startswith("postgres"):
        return value
    raise ValueError(f"{value!r} is not supported; use sqlite:///path.db or postgresql://user@host/db")


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{value!r} is not an http(s) URL")
    return value.rstrip("/")


def _secrets(value: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in value.split(","))
    if any(not item for item in items):
        raise ValueError("has an empty secret; separate secrets with single commas")
    return items


def _smtp_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ValueError("use smtp://host:port or smtps://user:password@host:port")
    return value


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty")
    return value.strip()


def _rate_limits(value: str) -> tuple[tuple[int, timedelta], ...]:
    """``120/m,1500/h``: each a count per window (s, m, h, d); ``none`` for no budget."""
    if value.strip().lower() in ("", "none", "0"):
        return ()
    limits = []
    for part in value.split(","):
        count, _, window = part.strip().partition("/")
        try:
            number = int(count)
            span = parse_duration(window if window[:1].isdigit() else f"1{window}")
        except ValueError:
            raise ValueError(f"{part.strip()!r} is not a budget; write it like 120/m or 1500/h") from None
        if number <= 0 or span <= timedelta(0):
            raise ValueError(f"{part.strip()!r} must allow at least one request in a positive window")
        limits.append((number, span))
    return tuple(limits)


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a whole number") from None
    if number <= 0:
        raise ValueError(f"{value!r} must be at least 1")
    return number


DEFAULT_RATE_LIMITS: dict[str, tuple[tuple[int, timedelta], ...]] = {
    # Blaaiz publishes its budget; the others do not, so a conservative default that settings can change.
    "blaaiz": ((120, timedelta(minutes=1)), (1500, timedelta(hours=1))),
    "connectfi": ((5, timedelta(seconds=1)),),
    "cryptopocket": ((5, timedelta(seconds=1)),),
}


def _one_of(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value.strip().lower() not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return value.strip().lower()
    return parse


def _boolean(value: str) -> bool:
    return _one_of("true", "false", "1", "0", "yes", "no", "on", "off")(value) in ("true", "1", "yes", "on")


def _port(value: str) -> int:
    port = int(value) if value.strip().isdecimal() else -1
    if not 0 <= port <= 65535:
        raise ValueError(f"{value!r} is not a port number (1 to 65535, or 0 for off)")
    return port


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
            "DATABASE_URL": _database_url,
            "LOG_LEVEL": lambda value: _one_of("debug", "info", "warning", "error")(value).upper(),
            "LOG_FORMAT": _one_of("text", "json"),
            "ACCESS_LOG": _boolean,
            "METRICS_PORT": _port,
            "BLAAIZ_WEBHOOK_SECRETS": _secrets,
            "BLAAIZ_WEBHOOK_TOLERANCE": _seconds,
            "BLAAIZ_BASE_URL": _http_url,
            "BLAAIZ_CLIENT_ID": _text,
            "BLAAIZ_CLIENT_SECRET": _text,
            "CONNECTFI_BASE_URL": _http_url,
            "CONNECTFI_LOGIN": _text,
            "CONNECTFI_PASSWORD": _text,
            "CONNECTFI_WEBHOOK_TOKEN": _text,
            "CRYPTOPOCKET_BASE_URL": _http_url,
            "CRYPTOPOCKET_API_KEY": _text,
            "CRYPTOPOCKET_API_SECRET": _text,
            "OVERDUE_AFTER": _positive_duration,
            "CRITICAL_AFTER": _positive_duration,
            "POLL_INTERVAL": _positive_duration,
            "TICK": _positive_duration,
            "AWAITING_POLL_INTERVAL": _positive_duration,
            "RECONCILE_AFTER": _positive_duration,
            "CRITICAL_REPEAT": _duration,
            "CLOCK_SKEW": _positive_duration,
            "STREAM_HEARTBEAT": _positive_duration,
            "ALERT_SLACK_URL": _http_url,
            "ALERT_WEBHOOK_URL": _http_url,
            "ALERT_WEBHOOK_SECRET": _text,
            "ALERT_PAGERDUTY_ROUTING_KEY": _text,
            "ALERT_PAGERDUTY_URL": _http_url,
            "ALERT_SMTP_URL": _smtp_url,
            "ALERT_EMAIL_TO": _text,
            "API_KEY_CACHE_TTL": _duration,
            "POLL_LEASE": _positive_duration,
            "INCIDENT_THRESHOLD": _positive_int,
            "INCIDENT_WINDOW": _positive_duration,
            "BLAAIZ_BUSINESS_OVERDUE_DAYS": _positive_int,
            "POLL_TIMEOUT": _positive_duration,
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
                        rate_limits[provider] = _rate_limits(raw)
                    elif kind == "CONCURRENCY":
                        concurrency[provider] = _positive_int(raw)
                    else:
                        target = overdue if kind == "OVERDUE_AFTER" else critical
                        target[provider] = _positive_duration(raw)
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
