"""The access tokens a simulator hands out and checks: each lives ``token_lifetime`` seconds on the
simulator's clock, and a test can expire them all at once. ``SimulatorBase`` mixes it in."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import timedelta

from tracker.clock import Clock
from tracker.providers.simulators.records import Token


class TokenIssuer:
    """The tokens issued by one simulator (mixed into ``SimulatorBase``)."""

    name: str
    clock: Clock
    token_lifetime: float | None
    _tokens: dict[str, Token]

    def issue_token(self, scopes: Iterable[str] = ()) -> Token:
        lifetime = self.token_lifetime
        expires = None if lifetime is None else self.clock.now() + timedelta(seconds=lifetime)
        token = Token(f"sim_{self.name}_{secrets.token_urlsafe(24)}", expires, frozenset(scopes))
        self._tokens[token.value] = token
        return token

    def check_token(self, value: str | None) -> Token | None:
        """The token if it was issued and has not expired (per the clock), else None."""
        if not value:
            return None
        token = self._tokens.get(value.strip())
        if token is None:
            return None
        if token.expires_at is not None and self.clock.now() >= token.expires_at:
            return None
        return token

    def expire_tokens(self) -> None:
        """Every token issued so far becomes invalid: the next data call fails the provider's way."""
        self._tokens.clear()
