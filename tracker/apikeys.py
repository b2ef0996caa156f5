"""API keys: ``trk_<prefix>_<secret>``, stored as the prefix and a SHA-256 of the whole key.

Keys are 190 bits of randomness, so a fast hash is enough (no password stretching needed). Verified keys
are cached in memory for a short time (``TRACKER_API_KEY_CACHE_TTL``) so a read does not cost a lookup.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine

from tracker.clock import Clock
from tracker.db import queries
from tracker.errors import Invalid

SCOPES = ("read", "write", "admin")
_RANK = {scope: rank for rank, scope in enumerate(SCOPES)}


@dataclass(frozen=True)
class Principal:
    name: str
    scope: str

    def allows(self, needed: str) -> bool:
        """``admin`` may do what ``write`` may, which may do what ``read`` may."""
        return _RANK[self.scope] >= _RANK[needed]


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    def __init__(self, engine: Engine, clock: Clock, cache_ttl: timedelta = timedelta(seconds=30)) -> None:
        self.engine = engine
        self.clock = clock
        self.cache_ttl = cache_ttl.total_seconds()
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()

    def create(self, name: str, scope: str) -> str:
        """Store a new key and return it; this is the only time the plain key exists."""
        if scope not in SCOPES:
            raise Invalid(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
        if not name.strip():
            raise Invalid("a key needs a name, so you can tell later what it is for")
        prefix = secrets.token_hex(4)
        key = f"trk_{prefix}_{secrets.token_urlsafe(24)}"
        with self.engine.begin() as conn:
            queries.insert_api_key(conn, {"name": name.strip(), "prefix": prefix, "key_hash": _hash(key),
                                          "scope": scope, "created_at": self.clock.now()})
        return key

    def from_cache(self, key: str) -> Principal | None:
        """The key's principal if it was verified within the cache time; no database access."""
        cached = self._cache.get(_hash(key))
        if cached is not None and cached[1] > self.clock.now().timestamp():
            return cached[0]
        return None

    def authenticate(self, key: str) -> Principal | None:
        cached = self.from_cache(key)
        if cached is not None:
            return cached
        digest = _hash(key)
        now = self.clock.now().timestamp()
        parts = key.split("_")
        if len(parts) < 3 or parts[0] != "trk":
            return None
        with self.engine.connect() as conn:
            row = queries.api_key_by_prefix(conn, parts[1])
        if row is None or not hmac.compare_digest(row.key_hash, digest):
            return None
        principal = Principal(row.name, row.scope)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (principal, now + self.cache_ttl)
        return principal
