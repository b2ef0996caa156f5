"""Parsers of single setting values, one for each kind a ``TRACKER_*`` variable holds (durations, URLs,
secrets, budgets, numbers, choices). Each takes the raw text and returns the value, or raises ``ValueError``
with a message that ``Settings.from_env`` prefixes with the variable's name."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from urllib.parse import urlsplit

from tracker.durations import parse_duration


def duration(value: str) -> timedelta:
    parsed = parse_duration(value)
    if parsed < timedelta(0):
        raise ValueError("must not be negative")
    return parsed


def positive_duration(value: str) -> timedelta:
    parsed = duration(value)
    if parsed <= timedelta(0):
        raise ValueError(f"{value!r} must be longer than zero")
    return parsed


def seconds(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = int(duration(value).total_seconds())
    if number < 0:
        raise ValueError(f"{value!r} must be zero (off) or a positive number of seconds")
    return number


def database_url(value: str) -> str:
    scheme = urlsplit(value).scheme
    if scheme.startswith("sqlite") or scheme.startswith("postgres"):
        return value
    raise ValueError(f"{value!r} is not supported; use sqlite:///path.db or postgresql://user@host/db")


def http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{value!r} is not an http(s) URL")
    return value.rstrip("/")


def secrets(value: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in value.split(","))
    if any(not item for item in items):
        raise ValueError("has an empty secret; separate secrets with single commas")
    return items


def smtp_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ValueError("use smtp://host:port or smtps://user:password@host:port")
    return value


def text(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty")
    return value.strip()


def rate_limits(value: str) -> tuple[tuple[int, timedelta], ...]:
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


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a whole number") from None
    if number <= 0:
        raise ValueError(f"{value!r} must be at least 1")
    return number


def one_of(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value.strip().lower() not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return value.strip().lower()
    return parse


def boolean(value: str) -> bool:
    return one_of("true", "false", "1", "0", "yes", "no", "on", "off")(value) in ("true", "1", "yes", "on")


def port(value: str) -> int:
    number = int(value) if value.strip().isdecimal() else -1
    if not 0 <= number <= 65535:
        raise ValueError(f"{value!r} is not a port number (1 to 65535, or 0 for off)")
    return number
