"""Property tests (Hypothesis) of the three providers' webhook authentication and parsing, fed arbitrary and
almost-valid input.

1. Never an unhandled exception. Through the real app over HTTP (``client``): whatever the bytes and headers, a
   webhook is answered 4xx, or 2xx only when validly signed (connectFi: the right path token); never 5xx. Called
   directly, each provider's ``verify`` raises only its ``SignatureError`` (a ValueError, which
   ``tracker.web.webhooks.receive`` answers 401), ``parse`` only ``ParseError`` (400), ``scrub`` and the
   re-encoding of what is stored nothing at all, and ``decode_json`` only ValueError (400).
2. Never a stored change without a valid signature: after an unsigned, wrongly signed or tampered request (one
   byte flipped, another secret, a stale or altered timestamp, a missing header, a near-miss path token) no
   customer row is created or changed and no inbound event is stored. And a positive control: a validly signed
   body in the providers' real shapes (statuses, ids, times drawn by Hypothesis) is accepted (200) and applied,
   so these tests can fail. Signatures are made here (conftest's ``sign``, ``pocket_sign``), not by the code
   under test, and what ``verify`` lets through is checked against an independent statement of a valid one.
3. What a webhook stores (the payload scrubbed of personal data) reads, when the applier parses it again, as
   the event that was parsed on receipt: an accepted event is never lost to the scrubbing.

The HTTP tests build one app and container per test function; Hypothesis runs its examples against it (the
fixtures are function-scoped on purpose, hence the suppressed health check). The clock is the fixed FakeClock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import httpx
import hypothesis
import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select

from tests.conftest import OLD_SECRET, SECRET, make_settings, register, sign
from tracker.clock import FakeClock
from tracker.db.tables import customers, history, inbound_events
from tracker.domain.events import ParseError
from tracker.providers import blaaiz, connectfi, cryptopocket, parse_stored
from tracker.settings import Settings
from tracker.web.requests import decode_json
from tracker.web.webhooks import _encode, receivers

# The same placeholder credentials as tests/test_webhooks_others.py (the simulators' defaults).
CF_TOKEN = "cf-path-token-123"
CP_KEY, CP_SECRET = "sim-cryptopocket-key", "sim-cryptopocket-secret"
TOLERANCE = 300  # conftest's blaaiz_webhook_tolerance; CryptoPocket's window is fixed at 5 minutes
NOW = int(FakeClock().now().timestamp())  # the clock fixture's time; it never moves in this file
NOW_DT = datetime.fromtimestamp(NOW, UTC)

HTTP = hypothesis.settings(max_examples=60, deadline=None, database=None,
                           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                  HealthCheck.data_too_large])
PURE = hypothesis.settings(max_examples=150, deadline=None, database=None,
                           suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

Headers = dict[str, str]
Case = tuple[bytes, Headers]  # a body and its headers


# --- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture
def settings(database_url: str) -> Settings:
    """conftest's settings, with connectFi's path token and CryptoPocket's key and secret configured too."""
    return make_settings(database_url, connectfi_webhook_token=CF_TOKEN, cryptopocket_api_key=CP_KEY,
                         cryptopocket_api_secret=CP_SECRET)


SEEDED = {"blaaiz": "cus_fz", "connectfi": "cf_cust_fz", "cryptopocket": "usr_fz"}


@pytest.fixture
async def seeded(client: httpx.AsyncClient, write_key: dict[str, str], clock: FakeClock) -> None:
    """One registered customer per provider (the Blaaiz one submitted, so pending), the one most forged events
    name: accepting one would change its row."""
    assert int(clock.now().timestamp()) == NOW
    for provider, pcid in SEEDED.items():
        extra = {"application_id": "app_fz"} if provider == "connectfi" else {}
        customer = await register(client, write_key, pcid, provider=provider, **extra)
        if provider == "blaaiz":
            response = await client.post(f"/v1/customers/{customer['id']}/submit", headers=write_key)
            assert response.json()["state"] == "pending", response.text


def snapshot(engine: Engine) -> tuple[Any, ...]:
    """Every customer row as stored, and how many inbound events and history rows there are."""
    with engine.connect() as conn:
        rows = tuple(tuple(row) for row in conn.execute(select(customers).order_by(customers.c.id)))
        events = conn.execute(select(func.count()).select_from(inbound_events)).scalar_one()
        changes = conn.execute(select(func.count()).select_from(history)).scalar_one()
    return rows, events, changes


def event_outcome(engine: Engine, event_id: int) -> str:
    with engine.connect() as conn:
        return str(conn.execute(select(inbound_events.c.outcome).where(inbound_events.c.id == event_id)).scalar_one())


def wire(headers: Mapping[str, str]) -> dict[str, bytes]:
    """Header values as the bytes a client sends (UTF-8: a server reads non-ASCII bytes as Latin-1 text)."""
    return {name: value.encode() for name, value in headers.items()}


async def assert_refused_and_unchanged(client: httpx.AsyncClient, engine: Engine, url: str, body: bytes,
                                       headers: Mapping[str, str], statuses: tuple[int, ...] = (401,)) -> None:
    before = snapshot(engine)
    response = await client.post(url, content=body, headers=wire(headers))
    assert response.status_code in statuses, (response.status_code, response.text)
    assert snapshot(engine) == before


# --- strategies: values -------------------------------------------------------------------------------

IDS = st.from_regex(r"[A-Za-z0-9_\-]{1,40}", fullmatch=True)
ZONES = st.sampled_from([UTC, timezone(timedelta(hours=1)), timezone(timedelta(hours=-5, minutes=-30)),
                         timezone(timedelta(hours=14))])
REAL_TIMES = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 12, 31), timezones=ZONES)
# Any time Python can hold, in any zone: the ends of the range overflow when moved to UTC.
ANY_TIMES = st.datetimes(timezones=st.builds(timezone, st.timedeltas(min_value=timedelta(hours=-23),
                                                                     max_value=timedelta(hours=23))))
COMMENTS = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=120)
# Header values a client can send: any text but CR, LF and NUL (which no HTTP server passes on).
HEADER_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\x00"), max_size=60)
HUGE_NUMBERS = st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**30, 10**308, 10**309, 10**400, -(10**400),
                                int("9" * 4000)])
JSON_SCALARS = (st.none() | st.booleans() | st.integers() | HUGE_NUMBERS | st.floats() | st.text(max_size=40)
                | ANY_TIMES.map(datetime.isoformat))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)

# Times as the providers write them, within a decade of now.
BLAAIZ_TIMES = st.one_of(REAL_TIMES.map(datetime.isoformat),
                         REAL_TIMES.map(lambda t: t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")),
                         REAL_TIMES.map(lambda t: t.replace(tzinfo=None).isoformat(" ")),  # no zone: UTC
                         REAL_TIMES.map(lambda t: int(t.timestamp())), st.none())
BLAAIZ_STATUSES = st.sampled_from([*sorted(blaaiz.STATUS_TRIGGERS), "verified", " Processing ", "ON_HOLD"])
CONNECTFI_STATUSES = st.sampled_from([*sorted(connectfi.STATUS_TRIGGERS), "WAITING_REVIEW", "archived"])
CONNECTFI_OUTCOMES = st.sampled_from([None, "", "approved", "Approved", "declined", "rejected: document expired"])
POCKET_STATUSES = st.sampled_from([*sorted(cryptopocket.STATUS_TRIGGERS), "VALID", "Processing", "on_hold"])


def customer_ids(provider: str) -> st.SearchStrategy[Any]:
    """Mostly the seeded customer (so an accepted forgery would change it), else a new one (would create it)."""
    return st.sampled_from([SEEDED[provider]]) | IDS | st.integers(min_value=1, max_value=10**12)


@st.composite
def blaaiz_payloads(draw: st.DrawFn) -> dict[str, Any]:
    """A Blaaiz customer webhook body in the documented shape (the e-mail is a placeholder)."""
    event_type = draw(st.sampled_from(sorted(blaaiz.CUSTOMER_EVENTS)))
    payload: dict[str, Any] = {
        "message": "Customer status updated", "event_type": event_type, "customer_id": draw(customer_ids("blaaiz")),
        "customer_email": "someone@example.invalid", "old_status": draw(BLAAIZ_STATUSES),
        "comment": draw(st.none() | COMMENTS), "updated_at": draw(BLAAIZ_TIMES), "type": "customer",
    }
    if draw(st.booleans()):
        payload["event_id"] = "evt_" + draw(IDS)
    if event_type == "customer.status_changed" or draw(st.booleans()):
        payload["new_status"] = draw(BLAAIZ_STATUSES)
    return payload


@st.composite
def connectfi_payloads(draw: st.DrawFn) -> dict[str, Any]:
    """A connectFi akepa callback body (code, data, requestId)."""
    data: dict[str, Any] = {"applicationId": draw(st.sampled_from(["app_fz"]) | IDS), "aggregatorId": draw(IDS),
                            "customerId": draw(customer_ids("connectfi")), "status": draw(CONNECTFI_STATUSES)}
    outcome = draw(CONNECTFI_OUTCOMES)
    if outcome is not None:
        data["outcome"] = outcome
    return {"code": "0", "data": data, "requestId": draw(IDS)}


@st.composite
def pocket_payloads(draw: st.DrawFn) -> dict[str, Any]:
    """A CryptoPocket KYC webhook body (undocumented: flat, or the same fields under ``data``)."""
    fields: dict[str, Any] = {draw(st.sampled_from(["user_id", "userId"])): draw(customer_ids("cryptopocket")),
                              "kyc_status": draw(POCKET_STATUSES),
                              "timestamp": draw(REAL_TIMES.map(lambda t: int(t.timestamp())))}
    payload: dict[str, Any] = {"event": "kyc.status_changed"}
    if draw(st.booleans()):
        payload["event_id"] = "evt_" + draw(IDS)
    if draw(st.booleans()):
        payload["data"] = fields
    else:
        payload.update(fields)
    return payload


def encoded(payloads: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    """The payload as the JSON bytes a provider may send: compact, spaced or indented."""
    return st.tuples(payloads, st.sampled_from([None, 2]), st.sampled_from([(",", ":"), (", ", ": ")])).map(
        lambda args: json.dumps(args[0], indent=args[1], separators=args[2]).encode())


# A provider's time field holding anything: numbers no float holds, times that leave the range once in UTC.
ODD_TIMES = st.one_of(HUGE_NUMBERS, st.sampled_from(["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
                                                    "0001-01-01", "9999-12-31T23:59:59.999999Z",
                                                    "2026-13-01T00:00:00Z", "1e400"]),
                      ANY_TIMES.map(datetime.isoformat), ANY_TIMES.map(lambda t: t.isoformat(" ")), st.integers(),
                      st.floats(), st.text(max_size=30))
TIME_FIELDS = ("updated_at", "timestamp")


@st.composite
def odd_payloads(draw: st.DrawFn, payloads: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A real-shaped payload with some fields (also inside ``data``) replaced by arbitrary JSON, or dropped, and
    often its time field replaced by an odd one."""
    payload = draw(payloads)
    target = payload["data"] if isinstance(payload.get("data"), dict) and draw(st.booleans()) else payload
    for key in draw(st.lists(st.sampled_from(sorted(target)), max_size=3, unique=True)):
        if draw(st.booleans()):
            target[key] = draw(JSON_VALUES)
        else:
            del target[key]
    for key in TIME_FIELDS:
        if key in target and draw(st.booleans()):
            target[key] = draw(ODD_TIMES)
    return payload


@st.composite
def odd_times(draw: st.DrawFn, payloads: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A real-shaped payload whose time field (also inside ``data``) holds an odd value."""
    payload = draw(payloads)
    for target in (payload, payload.get("data")):
        if isinstance(target, dict):
            for key in TIME_FIELDS:
                if key in target:
                    target[key] = draw(ODD_TIMES)
    return payload


def garbage_bodies(payloads: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    """Bodies no provider should send: random bytes, any JSON, almost-valid payloads, JSON no column can hold."""
    return st.one_of(
        st.binary(max_size=300),
        JSON_VALUES.map(lambda value: json.dumps(value).encode()),
        encoded(odd_payloads(payloads)),
        encoded(odd_times(payloads)),
        st.sampled_from([b"", b"null", b"[]", b"{}", b'"\\ud800"', b'{"customer_id": "\\udfff"}', b"NaN",
                         b"[" * 5000 + b"]" * 5000, b"\xef\xbb\xbf{}", b'{"a": 1e999}', b"9" * 5000]),
    )


# --- strategies: requests -----------------------------------------------------------------------------


NON_ASCII = ("é", "\u00a0", "\u0660", "ø", "\U0001f600")  # spliced into a signature: a digit-like one among them


def mutate_char(draw: st.DrawFn, text: str) -> str:
    """``text`` with one character replaced by another one that differs even ignoring case."""
    index = draw(st.integers(0, len(text) - 1))
    new = draw(st.characters(codec="utf-8", exclude_characters="\r\n\x00").filter(
        lambda c: c.lower() != text[index].lower()))
    return text[:index] + new + text[index + 1:]


def flip_byte(draw: st.DrawFn, body: bytes) -> bytes:
    index = draw(st.integers(0, len(body) - 1))
    mask = draw(st.integers(1, 255))
    return body[:index] + bytes([body[index] ^ mask]) + body[index + 1:]


def tamper_body(draw: st.DrawFn, body: bytes, kind: str, other_bodies: st.SearchStrategy[bytes]) -> bytes:
    """The body changed after it was signed."""
    if not body and kind in ("flip", "truncate"):
        kind = "append"  # nothing to flip or cut
    if kind == "flip":
        return flip_byte(draw, body)
    if kind == "append":
        return body + draw(st.binary(min_size=1, max_size=20))
    if kind == "truncate":
        return body[:draw(st.integers(0, len(body) - 1))]
    other = draw(other_bodies.filter(lambda candidate: candidate != body))  # "swap": another event's body
    return other


BODY_TAMPERING = ("flip", "append", "truncate", "swap")
BLAAIZ_TAMPERING = (*BODY_TAMPERING, "other_secret", "stale", "timestamp_changed", "huge_timestamp",
                    "junk_timestamp", "signature_char", "signature_truncated", "signature_non_ascii",
                    "missing_signature", "missing_timestamp", "empty_signature", "empty_timestamp")


def tamper_header(draw: st.DrawFn, kind: str, timestamp: str, signature: str, resign: Callable[[str], str],
                  tolerance: int, changed_forms: tuple[str, ...] = ()) -> tuple[str, str] | None:
    """The timestamp and signature tampering both HMAC schemes share (Blaaiz, CryptoPocket): the new timestamp and
    signature, or None for a kind that is not one of them. ``resign`` signs the body for a timestamp with the
    valid secret; ``tolerance`` is the scheme's replay window in seconds; ``changed_forms`` are further spellings
    of a timestamp that no longer says what was signed."""
    if kind == "stale":
        timestamp = str(NOW + draw(st.integers(tolerance + 1, 10**12)) * draw(st.sampled_from([-1, 1])))
        return timestamp, resign(timestamp)
    if kind == "timestamp_changed":  # the header no longer says what was signed
        shift = draw(st.integers(-tolerance, tolerance).filter(bool))
        return draw(st.sampled_from([str(NOW + shift), f"0{NOW}", f"+{NOW}", *changed_forms])), signature
    if kind == "huge_timestamp":  # validly signed, but no time near now
        timestamp = draw(st.sampled_from(["1", "9", "-1"])) + "0" * draw(st.integers(20, 4200))
        return timestamp, resign(timestamp)
    if kind == "junk_timestamp":
        return draw(HEADER_TEXT.filter(lambda s: s.strip() != str(NOW))), signature
    if kind == "signature_char":
        return timestamp, mutate_char(draw, signature)
    if kind == "signature_truncated":
        return timestamp, signature[:draw(st.integers(1, len(signature) - 1))]
    if kind == "signature_non_ascii":
        index = draw(st.integers(0, len(signature)))
        return timestamp, signature[:index] + draw(st.sampled_from(NON_ASCII)) + signature[index:]
    if kind == "empty_signature":
        return timestamp, ""
    return None


@st.composite
def blaaiz_signed(draw: st.DrawFn, bodies: st.SearchStrategy[bytes]) -> Case:
    """A validly signed delivery, in any of the forms Blaaiz's signature may validly take."""
    body = draw(bodies)
    timestamp = str(NOW + draw(st.integers(-TOLERANCE, TOLERANCE)))
    signature = sign(body, timestamp, draw(st.sampled_from([SECRET, OLD_SECRET])))
    signature = draw(st.sampled_from([signature, signature.upper(), f"sha256={signature}", f" {signature} "]))
    timestamp = draw(st.sampled_from([timestamp, f" {timestamp} "]))
    return body, {"content-type": "application/json", blaaiz.TIMESTAMP_HEADER: timestamp,
                  blaaiz.SIGNATURE_HEADER: signature}


@st.composite
def blaaiz_forged(draw: st.DrawFn, bodies: st.SearchStrategy[bytes]) -> Case:
    """A delivery that is almost validly signed, but not: every ``BLAAIZ_TAMPERING``."""
    body = draw(bodies)
    timestamp = str(NOW)
    signature = sign(body, timestamp, SECRET)
    kind = draw(st.sampled_from(BLAAIZ_TAMPERING))
    if kind in BODY_TAMPERING:
        body = tamper_body(draw, body, kind, bodies)
    elif kind == "other_secret":
        signature = sign(body, timestamp, draw(st.text(min_size=1).filter(lambda s: s not in (SECRET, OLD_SECRET))))
    elif kind == "empty_timestamp":
        timestamp = ""
    else:
        tampered = tamper_header(draw, kind, timestamp, signature, lambda at: sign(body, at, SECRET), TOLERANCE,
                                 (f"{NOW}.0",))
        if tampered is not None:
            timestamp, signature = tampered
    headers = {"content-type": "application/json", blaaiz.TIMESTAMP_HEADER: timestamp,
               blaaiz.SIGNATURE_HEADER: signature}
    if kind == "missing_signature":
        del headers[blaaiz.SIGNATURE_HEADER]
    elif kind == "missing_timestamp":
        del headers[blaaiz.TIMESTAMP_HEADER]
    return body, headers


def pocket_sign(secret: str, body: bytes, timestamp: str, encoding: str = "hex") -> str:
    digest = hmac.new(secret.encode(), body + timestamp.encode(), hashlib.sha256).digest()
    return digest.hex() if encoding == "hex" else base64.b64encode(digest).decode()


POCKET_TAMPERING = (*BODY_TAMPERING, "other_secret", "other_secret_base64", "stale", "timestamp_changed",
                    "huge_timestamp", "junk_timestamp", "signature_char", "signature_truncated",
                    "signature_non_ascii", "key_changed", "key_other", "missing_key", "missing_signature",
                    "missing_timestamp", "empty_signature")


def pocket_headers(key: str, timestamp: str, signature: str, draw: st.DrawFn) -> Headers:
    """The three headers, their names in any case (header names are case-insensitive)."""
    names = [draw(st.sampled_from([name, name.upper(), name.title()])) for name in (
        cryptopocket.KEY_HEADER, cryptopocket.TIMESTAMP_HEADER, cryptopocket.SIGNATURE_HEADER)]
    return {"content-type": "application/json", **dict(zip(names, (key, timestamp, signature), strict=True))}


@st.composite
def pocket_signed(draw: st.DrawFn, bodies: st.SearchStrategy[bytes]) -> Case:
    body = draw(bodies)
    timestamp = str(NOW + draw(st.integers(-300, 300)))
    signature = pocket_sign(CP_SECRET, body, timestamp, draw(st.sampled_from(["hex", "base64"])))
    signature = draw(st.sampled_from([signature, f"sha256={signature}", f" {signature} "]))
    return body, pocket_headers(CP_KEY, timestamp, signature, draw)


@st.composite
def pocket_forged(draw: st.DrawFn, bodies: st.SearchStrategy[bytes]) -> Case:
    body = draw(bodies)
    key, timestamp = CP_KEY, str(NOW)
    signature = pocket_sign(CP_SECRET, body, timestamp)
    kind = draw(st.sampled_from(POCKET_TAMPERING))
    if kind in BODY_TAMPERING:
        body = tamper_body(draw, body, kind, bodies)
    elif kind in ("other_secret", "other_secret_base64"):
        signature = pocket_sign(draw(st.text(min_size=1).filter(lambda s: s != CP_SECRET)), body, timestamp,
                                "hex" if kind == "other_secret" else "base64")
    elif kind == "key_changed":
        key = draw(st.sampled_from([CP_KEY.upper(), CP_KEY[:-1], CP_KEY + "x", mutate_char(draw, CP_KEY),
                                    CP_KEY.replace("-", "\u2010")]))
    elif kind == "key_other":
        key = draw(HEADER_TEXT.filter(lambda s: s.strip() != CP_KEY))
    else:
        tampered = tamper_header(draw, kind, timestamp, signature, lambda at: pocket_sign(CP_SECRET, body, at), 300)
        if tampered is not None:
            timestamp, signature = tampered
    headers = pocket_headers(key, timestamp, signature, draw)
    if kind.startswith("missing_"):
        wanted = {"missing_key": cryptopocket.KEY_HEADER, "missing_signature": cryptopocket.SIGNATURE_HEADER,
                  "missing_timestamp": cryptopocket.TIMESTAMP_HEADER}[kind]
        headers = {name: value for name, value in headers.items() if name.lower() != wanted}
    return body, headers


# Tokens that are almost connectFi's path token, and any other text (no lone surrogates: a URL is UTF-8).
NEAR_TOKENS = st.one_of(
    st.sampled_from([CF_TOKEN.upper(), CF_TOKEN[:-1], CF_TOKEN + "4", f" {CF_TOKEN}", f"{CF_TOKEN} ", CF_TOKEN[1:],
                     CF_TOKEN.replace("-", "_"), f"{CF_TOKEN}\x00", "0", "None", "null", "%s", "token"]),
    st.builds(lambda i, c: CF_TOKEN[:i] + c + CF_TOKEN[i + 1:], st.integers(0, len(CF_TOKEN) - 1),
              st.characters(codec="utf-8")),
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=60),
).filter(lambda token: token != CF_TOKEN)

# Header names a fuzzer should try: every provider's own, the generic ones, and any token.
HEADER_NAMES = st.sampled_from([
    "content-type", "content-encoding", "user-agent", "authorization",
    blaaiz.SIGNATURE_HEADER, blaaiz.TIMESTAMP_HEADER, cryptopocket.KEY_HEADER, cryptopocket.SIGNATURE_HEADER,
    cryptopocket.TIMESTAMP_HEADER, "X-Signature", "X-API-Key", "X-Timestamp", connectfi.TOKEN_HEADER,
]) | st.from_regex(r"[a-z][a-z0-9\-]{0,20}", fullmatch=True)
CONTENT_TYPES = st.sampled_from(["application/json", "application/json; charset=utf-8", "APPLICATION/JSON",
                                 "application/vnd.api+json", "text/plain", "application/x-www-form-urlencoded",
                                 "", "json", "application/jsonx", "multipart/form-data; boundary=x"])
ARBITRARY_BODIES = st.one_of(st.binary(max_size=500), JSON_VALUES.map(lambda value: json.dumps(value).encode()))


@st.composite
def arbitrary_headers(draw: st.DrawFn) -> Headers:
    """Any headers but the framing ones (httpx writes Content-Length itself; a request whose framing contradicts
    its body is not one a server passes on), the content type often one of the JSON ones."""
    headers = draw(st.dictionaries(HEADER_NAMES, HEADER_TEXT, max_size=6))
    if draw(st.booleans()):
        headers["content-type"] = draw(CONTENT_TYPES)
    headers.pop("content-length", None)
    headers.pop("transfer-encoding", None)
    return headers


def signed_anything(signer: Callable[[bytes], Headers]) -> Callable[[bytes], Case]:
    return lambda body: (body, signer(body))


def blaaiz_headers(body: bytes) -> Headers:
    return {"content-type": "application/json", blaaiz.TIMESTAMP_HEADER: str(NOW),
            blaaiz.SIGNATURE_HEADER: sign(body, NOW)}


def pocket_valid_headers(body: bytes) -> Headers:
    return {"content-type": "application/json", "X-API-Key": CP_KEY, "X-Timestamp": str(NOW),
            "X-Signature": pocket_sign(CP_SECRET, body, str(NOW))}


def cf_url(token: str) -> str:
    return f"/webhooks/connectfi/{quote(token, safe='')}"


# --- 1. direct calls: only the documented errors --------------------------------------------------------


def blaaiz_really_signed(headers: Mapping[str, str], body: bytes, secrets: tuple[str, ...], tolerance: int) -> bool:
    """An independent statement of what a valid Blaaiz signature is."""
    signature, timestamp = headers.get(blaaiz.SIGNATURE_HEADER), headers.get(blaaiz.TIMESTAMP_HEADER)
    if not signature or not timestamp:
        return False
    stamp = timestamp.strip()
    try:
        sent_at = int(stamp)
    except ValueError:
        return False
    if tolerance and abs(sent_at - NOW) > tolerance:
        return False
    given = signature.strip().lower().removeprefix("sha256=")
    return any(hmac.new(s.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest() == given
               for s in secrets)


@PURE
@given(case=st.one_of(blaaiz_signed(encoded(blaaiz_payloads())), blaaiz_forged(encoded(blaaiz_payloads())),
                      blaaiz_forged(st.binary(max_size=200)), st.tuples(st.binary(max_size=200), arbitrary_headers())),
       tolerance=st.sampled_from([TOLERANCE, 0]), rotation=st.booleans())
@example(case=(b"{}", {blaaiz.TIMESTAMP_HEADER: "1" + "0" * 400, blaaiz.SIGNATURE_HEADER: "ab"}),
         tolerance=TOLERANCE, rotation=False)  # an integer no float holds: was OverflowError (a 500)
@example(case=(b"{}", {blaaiz.TIMESTAMP_HEADER: str(NOW), blaaiz.SIGNATURE_HEADER: "\u00e9"}),
         tolerance=TOLERANCE, rotation=False)  # non-ASCII signature: was TypeError from compare_digest (a 500)
def test_blaaiz_verify_refuses_with_signature_error_only(case: Case, tolerance: int, rotation: bool) -> None:
    body, headers = case
    secrets = (SECRET, OLD_SECRET) if rotation else (SECRET,)
    try:
        blaaiz.verify(headers, body, secrets, NOW_DT, tolerance)
    except blaaiz.SignatureError:
        assert not blaaiz_really_signed(headers, body, secrets, tolerance)
    else:
        assert blaaiz_really_signed(headers, body, secrets, tolerance)


def pocket_really_signed(headers: Mapping[str, str], body: bytes) -> bool:
    lowered = {name.lower(): value for name, value in headers.items()}
    key, signature, timestamp = (lowered.get(name) for name in (
        cryptopocket.KEY_HEADER, cryptopocket.SIGNATURE_HEADER, cryptopocket.TIMESTAMP_HEADER))
    if not key or key.strip() != CP_KEY or not signature or not timestamp:
        return False
    stamp = timestamp.strip()
    try:
        sent_at = int(stamp)
    except ValueError:
        return False
    if abs(sent_at - NOW) > cryptopocket.WINDOW_SECONDS:
        return False
    given = signature.strip().removeprefix("sha256=")
    digest = hmac.new(CP_SECRET.encode(), body + stamp.encode(), hashlib.sha256).digest()
    if given.lower() == digest.hex():
        return True
    try:
        return base64.b64decode(given, validate=True) == digest
    except ValueError:  # binascii.Error, or text that is not ASCII
        return False


@PURE
@given(case=st.one_of(pocket_signed(encoded(pocket_payloads())), pocket_forged(encoded(pocket_payloads())),
                      pocket_forged(st.binary(max_size=200)), st.tuples(st.binary(max_size=200), arbitrary_headers())))
@example(case=(b"{}", {"X-API-Key": CP_KEY, "X-Timestamp": "1" + "0" * 400, "X-Signature": "ab"}))
@example(case=(b"{}", {"X-API-Key": CP_KEY, "X-Timestamp": str(NOW), "X-Signature": "\u00e9"}))
@example(case=(b"{}", {"X-API-Key": "\u00e9", "X-Timestamp": str(NOW), "X-Signature": "ab"}))
def test_cryptopocket_verify_refuses_with_signature_error_only(case: Case) -> None:
    body, headers = case
    try:
        cryptopocket.verify(headers, body, CP_KEY, CP_SECRET, NOW_DT)
    except cryptopocket.SignatureError:
        assert not pocket_really_signed(headers, body)
    else:
        assert pocket_really_signed(headers, body)


CONNECTFI_VERIFY = receivers(make_settings("sqlite://", connectfi_webhook_token=CF_TOKEN))[connectfi.NAME].verify


@PURE
@given(token=st.one_of(NEAR_TOKENS, st.just(CF_TOKEN), JSON_SCALARS), headers=arbitrary_headers(),
       body=st.binary(max_size=100))
def test_connectfi_verify_refuses_with_value_error_only(token: Any, headers: Headers, body: bytes) -> None:
    try:
        CONNECTFI_VERIFY(headers, {"token": token}, body, NOW_DT)
    except ValueError:
        assert token != CF_TOKEN
    else:
        assert token == CF_TOKEN


PARSE = {blaaiz.NAME: (blaaiz.parse, blaaiz.scrub), connectfi.NAME: (connectfi.parse, connectfi.scrub),
         cryptopocket.NAME: (cryptopocket.parse, cryptopocket.scrub)}
PAYLOADS = {blaaiz.NAME: blaaiz_payloads(), connectfi.NAME: connectfi_payloads(),
            cryptopocket.NAME: pocket_payloads()}


def parse_as_received(provider: str, body: bytes) -> None:
    """What ``tracker.web.webhooks.receive`` does with a body once it is authenticated, raising only what it
    answers 400 for: ValueError from decoding, ParseError from parsing, RecursionError for the too deep. And
    what it stores (the scrubbed payload) is what the applier parses again: that must read as the same event."""
    parse, scrub = PARSE[provider]
    try:
        payload = decode_json(body)
    except ValueError:
        return
    stored: bytes | None = None
    try:
        if isinstance(payload, dict):
            stored = _encode(scrub(payload))
        event = parse(payload)
    except (ParseError, RecursionError):
        return
    if stored is not None and event.signal is not None:
        again = parse_stored(provider, stored)
        assert (again.provider_customer_id, again.signal, again.event_id, again.unknown_status) == (
            event.provider_customer_id, event.signal, event.event_id, event.unknown_status), stored


@pytest.mark.parametrize("provider", sorted(PARSE))
@PURE
@given(data=st.data())
def test_parsers_raise_parse_error_only(provider: str, data: st.DataObject) -> None:
    payloads = PAYLOADS[provider]
    body = data.draw(st.one_of(garbage_bodies(payloads), encoded(odd_payloads(payloads)),
                               encoded(odd_times(payloads)), encoded(payloads)), label="body")
    parse_as_received(provider, body)


@pytest.mark.parametrize(("provider", "body"), [
    ("blaaiz", {"event_type": "customer.verified", "customer_id": "c", "updated_at": 10**400}),
    ("blaaiz", {"event_type": "customer.verified", "customer_id": "c", "updated_at": "0001-01-01T00:00:00+01:00"}),
    ("blaaiz", {"event_type": "customer.verified", "customer_id": "c", "updated_at": "9999-12-31T23:59:59-01:00"}),
    ("cryptopocket", {"user_id": "u", "kyc_status": "valid", "timestamp": 10**400}),
], ids=["blaaiz-huge-unix-time", "blaaiz-year-0-in-utc", "blaaiz-year-10000-in-utc", "cryptopocket-huge-time"])
def test_times_out_of_range_are_parse_errors(provider: str, body: dict[str, Any]) -> None:
    """Regressions the fuzzing found: each was an OverflowError, a 500 a provider retries for ever."""
    with pytest.raises(ParseError, match="cannot be read"):
        PARSE[provider][0](body)
    parse_as_received(provider, json.dumps(body).encode())


@pytest.mark.parametrize("body", [
    {"event": "kyc.status_changed", "data": {"user_id": "u", "kyc_status": "valid", "timestamp": NOW}},
    {"event": "kyc.status_changed", "userId": "u", "kyc_status": "valid", "timestamp": NOW},
], ids=["fields-under-data", "userId"])
def test_cryptopocket_shapes_it_accepts_are_stored_readable(body: dict[str, Any]) -> None:
    """Regression the fuzzing found: both shapes were answered 200 ``accepted``, then stored scrubbed of the
    fields parse had read, so the applier refused them (``rejected``) and the status change was lost."""
    parse_as_received(cryptopocket.NAME, json.dumps(body).encode())


# --- 1 and 2 over HTTP: arbitrary requests ---------------------------------------------------------------

PROVIDER_URLS = {"blaaiz": st.just("/webhooks/blaaiz"), "cryptopocket": st.just("/webhooks/cryptopocket"),
                 "connectfi": NEAR_TOKENS.map(cf_url)}


@pytest.mark.parametrize("provider", sorted(PROVIDER_URLS))
@HTTP
@given(data=st.data())
async def test_arbitrary_requests_are_4xx_and_change_nothing(client: httpx.AsyncClient, engine: Engine,
                                                             seeded: None, provider: str,
                                                             data: st.DataObject) -> None:
    """Any bytes, any headers (the providers' own among them): 4xx, nothing stored, no customer touched. For
    connectFi the path token is any text but the right one (a slash in it can also make a 3xx redirect)."""
    url = data.draw(PROVIDER_URLS[provider], label="url")
    body = data.draw(ARBITRARY_BODIES, label="body")
    headers = data.draw(arbitrary_headers(), label="headers")
    await assert_refused_and_unchanged(client, engine, url, body, headers,
                                       statuses=(*range(400, 500), *((307,) if provider == "connectfi" else ())))


# --- 2 over HTTP: forged and tampered deliveries ----------------------------------------------------------


@HTTP
@given(case=st.one_of(blaaiz_forged(encoded(blaaiz_payloads())), blaaiz_forged(garbage_bodies(blaaiz_payloads()))))
async def test_blaaiz_forged_is_401_and_changes_nothing(client: httpx.AsyncClient, engine: Engine, seeded: None,
                                                        case: Case) -> None:
    body, headers = case
    await assert_refused_and_unchanged(client, engine, "/webhooks/blaaiz", body, headers)


@HTTP
@given(case=st.one_of(pocket_forged(encoded(pocket_payloads())), pocket_forged(garbage_bodies(pocket_payloads()))))
async def test_cryptopocket_forged_is_401_and_changes_nothing(client: httpx.AsyncClient, engine: Engine,
                                                              seeded: None, case: Case) -> None:
    body, headers = case
    await assert_refused_and_unchanged(client, engine, "/webhooks/cryptopocket", body, headers)


@HTTP
@given(token=NEAR_TOKENS.filter(lambda token: "/" not in token and token.strip(".") != ""),
       body=st.one_of(encoded(connectfi_payloads()), garbage_bodies(connectfi_payloads())))
async def test_connectfi_wrong_token_is_401_and_changes_nothing(client: httpx.AsyncClient, engine: Engine,
                                                                seeded: None, token: str, body: bytes) -> None:
    await assert_refused_and_unchanged(client, engine, cf_url(token), body, {"content-type": "application/json"})


# --- 1 and 2 over HTTP: validly signed deliveries ---------------------------------------------------------

SIGNED_REAL = {
    "blaaiz": ("/webhooks/blaaiz", blaaiz_signed(encoded(blaaiz_payloads()))),
    "cryptopocket": ("/webhooks/cryptopocket", pocket_signed(encoded(pocket_payloads()))),
    "connectfi": (cf_url(CF_TOKEN), encoded(connectfi_payloads()).map(
        lambda body: (body, {"content-type": "application/json"}))),
}
SIGNED_GARBAGE = {
    "blaaiz": ("/webhooks/blaaiz", garbage_bodies(blaaiz_payloads()).map(signed_anything(blaaiz_headers))),
    "cryptopocket": ("/webhooks/cryptopocket",
                     garbage_bodies(pocket_payloads()).map(signed_anything(pocket_valid_headers))),
    "connectfi": (cf_url(CF_TOKEN), garbage_bodies(connectfi_payloads()).map(
        lambda body: (body, {"content-type": "application/json"}))),
}


@pytest.mark.parametrize("provider", sorted(SIGNED_REAL))
@HTTP
@given(data=st.data())
async def test_validly_signed_real_payloads_are_accepted(client: httpx.AsyncClient, engine: Engine, seeded: None,
                                                         provider: str, data: st.DataObject) -> None:
    """The positive control: what the providers send, signed as they sign it, is 200 and then applied (or kept
    as a duplicate or an ignored unknown status), never an applier error."""
    url, cases = SIGNED_REAL[provider]
    body, headers = data.draw(cases, label="delivery")
    response = await client.post(url, content=body, headers=wire(headers))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["status"] in ("accepted", "duplicate", "ignored"), answer
    assert event_outcome(engine, answer["event"]) in ("applied", "no_change", "stale", "conflict", "refused",
                                                      "ignored"), answer


@pytest.mark.parametrize("provider", sorted(SIGNED_GARBAGE))
@HTTP
@given(data=st.data())
async def test_validly_signed_garbage_is_200_or_400_never_500(client: httpx.AsyncClient, engine: Engine,
                                                              seeded: None, provider: str,
                                                              data: st.DataObject) -> None:
    """Authenticated but odd (random bytes, any JSON, real shapes with fields of any type, times out of any
    range): 200 or 400, never 500. A 400 is stored as a rejected event and touches no customer."""
    url, cases = SIGNED_GARBAGE[provider]
    body, headers = data.draw(cases, label="delivery")
    before = snapshot(engine)
    response = await client.post(url, content=body, headers=wire(headers))
    assert response.status_code in (200, 400), (response.status_code, response.text)
    if response.status_code == 400:
        assert response.json()["error"]["code"] == "invalid_event", response.text
        rows, events, changes = snapshot(engine)
        assert (rows, events, changes) == (before[0], before[1] + 1, before[2])
    else:
        assert event_outcome(engine, response.json()["event"]) != "error"
