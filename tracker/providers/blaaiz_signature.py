"""Blaaiz webhook signatures (PROVIDERS.md, Blaaiz): signing a body and checking a delivery's signature.

Signature: ``x-blaaiz-signature`` = lowercase hex HMAC-SHA256(secret, f"{x-blaaiz-timestamp}.{raw body}").
Several secrets may be valid at once (rotation). The timestamp window is configurable; 0 turns it off.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Mapping, Sequence
from datetime import datetime

SIGNATURE_HEADER = "x-blaaiz-signature"
TIMESTAMP_HEADER = "x-blaaiz-timestamp"


class SignatureError(ValueError):
    """Why a delivery's signature was refused (for the 401 answer; never includes secrets)."""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    message = timestamp.encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify(headers: Mapping[str, str], body: bytes, secrets: Sequence[str], now: datetime,
           tolerance_seconds: int) -> None:
    """Raise ``SignatureError`` unless one of ``secrets`` signed ``body`` within the timestamp window."""
    if not secrets:
        raise SignatureError("no Blaaiz signing secret is configured (TRACKER_BLAAIZ_WEBHOOK_SECRETS)")
    signature = headers.get(SIGNATURE_HEADER)
    timestamp = headers.get(TIMESTAMP_HEADER)
    if not signature:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    if not timestamp:
        raise SignatureError(f"missing {TIMESTAMP_HEADER} header")
    try:
        sent_at = int(timestamp.strip())
    except ValueError:
        raise SignatureError(f"{TIMESTAMP_HEADER} is not unix seconds") from None
    try:
        skew = abs(now.timestamp() - sent_at)
    except OverflowError:  # more digits than a float holds: no time near now
        skew = math.inf
    if tolerance_seconds and skew > tolerance_seconds:
        raise SignatureError(
            f"{TIMESTAMP_HEADER} is outside the allowed window of {tolerance_seconds} s; check the sender's clock"
        )
    # Compared as bytes: compare_digest raises TypeError for text with non-ASCII characters.
    given = signature.strip().lower().removeprefix("sha256=").encode("utf-8", "surrogatepass")
    matched = False
    for secret in secrets:
        # Check every secret, so the time taken does not say which one matched.
        matched |= hmac.compare_digest(sign(secret, timestamp.strip(), body).encode(), given)
    if not matched:
        raise SignatureError("signature does not match the body with any configured secret")
