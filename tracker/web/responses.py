"""JSON answers, errors in the contract's shape, customers as JSON, ETags."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from tracker.domain.events import MAX_ID


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat().replace("+00:00", "Z")


def dumps(data: Any) -> bytes:
    return json.dumps(data, default=_default, separators=(",", ":"), ensure_ascii=False).encode()


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(dumps(data), status_code=status, headers=headers, media_type="application/json")


def fast_dumps(data: Any) -> bytes:
    """``dumps`` for data made only of dicts, lists, str, int, bool, None and aware UTC datetimes (customers as
    ``customer_json`` makes them), by orjson: the same bytes (the tests compare them), several times faster."""
    return orjson.dumps(data, option=orjson.OPT_UTC_Z)


def plain_json_response(data: Any, headers: Mapping[str, str] | None = None) -> Response:
    """200 with ``data`` serialised by ``fast_dumps``."""
    return Response(fast_dumps(data), headers=headers, media_type="application/json")


@dataclass(frozen=True)
class Reply:
    """A JSON answer, made where no ``Request`` is at hand (``tracker.web.webhooks.receive``)."""

    status: int
    body: bytes
    headers: Mapping[str, str] | None = None

    def response(self) -> Response:
        return Response(self.body, status_code=self.status, headers=self.headers, media_type="application/json")


def error_reply(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> Reply:
    return Reply(status, dumps({"error": {"code": code, "message": message}}), headers)


def error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return error_reply(status, code, message, headers).response()


# What the catch-all error handler answers (tracker.web.app).
UNEXPECTED = error_reply(500, "internal", "an unexpected error happened; it has been logged")


def customer_json(row: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """A customer as the API shows it. Timestamps stay datetimes: ``dumps`` and ``fast_dumps`` write them as
    ``iso`` does (formatting them here would cost more than all the rest)."""
    pending_since = row["pending_since"]
    return {
        "id": row["id"],
        "provider": row["provider"],
        "provider_customer_id": row["provider_customer_id"],
        "reference": row["reference"],
        "application_id": row["application_id"],
        "customer_type": row["customer_type"],
        "state": row["state"],
        "provider_status": row["provider_status"],
        "tier": row["tier"],
        # The escalation's next deadline: a function of the attempt's start and the tier, which the ETag follows.
        "next_tier": row["deadline_tier"],
        "next_tier_at": row["deadline_at"],
        "pending_since": pending_since,
        "pending_seconds": int((now - pending_since).total_seconds()) if pending_since is not None else None,
        "decided_at": row["decided_at"],
        "rejection_reason": row["rejection_reason"],
        "attempts": row["attempts"],
        "rejections": row["rejections"],
        "discovered_by": row["discovered_by"],
        "flags": json.loads(row["flags"]) if row["flags"] else [],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "version": row["version"],
        "last_polled_at": row["last_polled_at"],
        "next_poll_at": row["next_poll_at"],
        "last_poll_error": row["last_poll_error"],
        "last_signal_at": row["last_signal_at"],
    }


def customer_etag(row: Mapping[str, Any]) -> str:
    """Follows stored changes only, never the clock: the version, and the count of writes to the row (a poll,
    a tier or a webhook that moves nothing changes what the record shows without a version)."""
    return f'"c{row["id"]}-v{row["version"]}-t{row["touches"]}"'


def list_etag(rows: Sequence[Mapping[str, Any]], query: str) -> str:
    digest = hashlib.sha256(query.encode())
    for row in rows:
        digest.update(f"{row['id']}:{row['version']}:{row['touches']};".encode())
    return f'"l{digest.hexdigest()[:32]}"'


def not_modified(request: Request, etag: str) -> bool:
    header = request.headers.get("if-none-match")
    return header is not None and header != "" and etag_matches(header, etag)


def etag_matches(if_none_match: str, etag: str) -> bool:
    """Whether an ``If-None-Match`` value names ``etag`` (weak comparison, as RFC 9110 asks for GET)."""
    if if_none_match.strip() == "*":
        return True
    return etag in {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}


def encode_cursor(at: datetime, customer_id: int, sort: str = "updated") -> str:
    """The customers list's ``next_cursor``: the last row's sort key (its ``updated_at``, or its
    ``pending_since`` for ``sort=pending_since``) and id."""
    raw = f"{at.isoformat()}|{customer_id}{'|p' if sort == 'pending_since' else ''}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int, str]:
    """``encode_cursor``'s time, id and sort. Raises ValueError (or UnicodeDecodeError) for any other text."""
    padded = cursor + "=" * (-len(cursor) % 4)
    text = base64.urlsafe_b64decode(padded.encode()).decode()
    stamp, ident, *rest = text.split("|")
    last = int(ident)
    if not 0 < last <= MAX_ID:
        raise ValueError("the cursor's id is out of range")
    if rest not in ([], ["p"]):
        raise ValueError("unknown sort")
    return datetime.fromisoformat(stamp), last, "pending_since" if rest else "updated"
