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
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from tracker.clock import Clock
from tracker.db import queries
from tracker.db.engine import write_transaction
from tracker.errors import Conflict, Invalid, NotFound

SCOPES = ("read", "write", "admin")
MAX_NAME = 128
_RANK = {scope: rank for rank, scope in enumerate(SCOPES)}


@dataclass(frozen=True)
class KeyInfo:
    """What ``tracker keys list`` shows of a key: never the key, nor its hash."""

    name: str
    scope: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


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
        name = name.strip()
        if not name:
            raise Invalid("a key needs a name, so you can tell later what it is for")
        if len(name) > MAX_NAME:
            raise Invalid(f"a key's name is at most {MAX_NAME} characters")
        prefix = secrets.token_hex(4)
        key = f"trk_{prefix}_{secrets.token_urlsafe(24)}"
        try:
            with write_transaction(self.engine) as conn:
                if queries.live_api_key_named(conn, name) is not None:
                    raise Conflict(f"a key named {name!r} exists; revoke it first or choose another name")
                queries.insert_api_key(conn, {"name": name, "prefix": prefix, "key_hash": _hash(key),
                                              "scope": scope, "created_at": self.clock.now()})
        except IntegrityError:  # created by someone else meanwhile
            raise Conflict(f"a key named {name!r} exists; revoke it first or choose another name") from None
        return key

    def listing(self, *, revoked: bool = False) -> list[KeyInfo]:
        """The keys (never the key itself, nor its hash), oldest first."""
        with self.engine.connect() as conn:
            rows = queries.api_keys_listed(conn, revoked=revoked)
        return [KeyInfo(row.name, row.scope, row.prefix, row.created_at, row.last_used_at, row.revoked_at)
                for row in rows]

    def revoke(self, name: str) -> KeyInfo:
        """Revoke the live key of that name: refused at once by this process, by others once their cache of it
        expires (``TRACKER_API_KEY_CACHE_TTL``). Raises ``NotFound``."""
        now = self.clock.now()
        with write_transaction(self.engine) as conn:
            row = queries.live_api_key_named(conn, name)
            if row is None:
                raise NotFound(f"no live key named {name!r} (tracker keys list shows them)")
            queries.set_api_key(conn, row.id, revoked_at=now)
        with self._lock:
            self._cache = {digest: entry for digest, entry in self._cache.items() if entry[0].name != name}
        return KeyInfo(row.name, row.scope, row.prefix, row.created_at, row.last_used_at, now)

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
        self._used(row.id)
        principal = Principal(row.name, row.scope)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (principal, now + self.cache_ttl)
        return principal

    def _used(self, key_id: int) -> None:
        """Record when the key was last verified: once per cache period, not per request. Best effort: a busy
        database must not refuse a valid key."""
        try:
            with write_transaction(self.engine) as conn:
                queries.set_api_key(conn, key_id, last_used_at=self.clock.now())
        except DBAPIError:
            pass
