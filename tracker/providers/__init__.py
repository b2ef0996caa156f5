"""The providers: each one's webhook verification and parsing, status mapping and status fetch (a module each;
Blaaiz's split by concern and re-exported by ``blaaiz``), and the stored events' parser by provider."""

from __future__ import annotations

import json

import orjson

from tracker.domain.events import ParsedEvent, ParseError
from tracker.providers import blaaiz, connectfi, cryptopocket

PARSERS = {blaaiz.NAME: blaaiz.parse, connectfi.NAME: connectfi.parse, cryptopocket.NAME: cryptopocket.parse}


def parse_stored(provider: str, body: bytes) -> ParsedEvent:
    """Parse a stored inbox body again (the applier, replays). Raises ``ParseError``."""
    parser = PARSERS.get(provider)
    if parser is None:
        raise ParseError(f"no parser for provider {provider!r}")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:  # what orjson refuses and the webhook path accepted (integers past 64 bits, NaN)
            payload = json.loads(body)
        except ValueError as exc:
            raise ParseError(f"the stored body is not JSON: {exc}") from None
    return parser(payload)
