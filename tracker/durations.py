"""Durations as people write them in settings and query strings: ``90s``, ``15m``, ``2h``, ``5d``."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
# Longer than any threshold, interval or age anyone means, and short enough that "now minus it" is still a time.
MAX_DAYS = 100 * 366
MAX_SECONDS = MAX_DAYS * 86400


def parse_duration(text: str) -> timedelta:
    """Parse ``90s``, ``15m``, ``2h``, ``5d``, ``1h30m`` or a bare number of seconds.

    Raises ``ValueError`` with a message that says what is accepted.
    """
    raw = text.strip().lower()
    if not raw:
        raise ValueError("empty duration; use a number with a unit, such as 90s, 15m, 2h or 5d")
    if re.fullmatch(r"\d+(?:\.\d+)?", raw):
        return _bounded(text, float(raw))
    pos = 0
    total = 0.0
    for match in _PART.finditer(raw):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(raw) or pos == 0:
        raise ValueError(f"{text!r} is not a duration; use a number with a unit, such as 90s, 15m, 2h or 5d")
    return _bounded(text, total)


def _bounded(text: str, seconds: float) -> timedelta:
    if seconds > MAX_SECONDS:
        raise ValueError(f"{text!r} is longer than the longest duration tracker takes ({MAX_DAYS} days)")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest exact spelling of a duration in the units ``parse_duration`` reads."""
    seconds = int(value.total_seconds())
    if seconds and value.total_seconds() == seconds:
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if seconds % size == 0:
                return f"{seconds // size}{unit}"
        return f"{seconds}s"
    return f"{value.total_seconds()}s"
