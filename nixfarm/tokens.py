"""API tokens: creation, and authentication with a short in-memory memo.

Every authenticated request would otherwise cost a database round trip; a token's
validity is remembered for a few seconds, which bounds how long a revoked token
keeps working on a server that did not revoke it itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from nixfarm.db import tokens as token_queries
from nixfarm.db.engine import Database
from nixfarm.db.models import Token


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's id, name and scopes."""

    token_id: int
    name: str
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class TokenView:
    id: int
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked: bool
    last_used_at: datetime | None

    @classmethod
    def of(cls, token: Token) -> TokenView:
        return cls(token.id, token.name, tuple(token.scopes), token.created_at,
                   token.expires_at, token.revoked, token.last_used_at)


_MEMO_SECONDS = 5.0
#: Tokens looked up by id (the issuers of registry pull tokens) are remembered more
#: briefly: a revocation through another server takes effect within this.
_ISSUER_SECONDS = 1.0
_MEMO_LIMIT = 10_000


class TokenService:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._memo: dict[str, tuple[float, Principal | None]] = {}
        self._by_id: dict[int, tuple[float, Principal | None]] = {}

    async def create(self, name: str, scopes: Iterable[str],
                     expires_at: datetime | None = None) -> tuple[TokenView, str]:
        async with self.db.session() as s:
            token, secret = await token_queries.create_token(s, name, scopes, expires_at)
            return TokenView.of(token), secret

    async def authenticate(self, secret: str) -> Principal | None:
        now = time.monotonic()
        memo = self._memo.get(secret)
        if memo is not None and memo[0] > now:
            return memo[1]
        async with self.db.session() as s:
            token = await token_queries.authenticate(s, secret)
            principal = (Principal(token.id, token.name, tuple(token.scopes))
                         if token is not None else None)
        if len(self._memo) > _MEMO_LIMIT:
            self._memo.clear()
        self._memo[secret] = (now + _MEMO_SECONDS, principal)
        return principal

    async def by_id(self, token_id: int) -> Principal | None:
        """The live token with this id (its secret unknown: a pull token's issuer)."""
        now = time.monotonic()
        memo = self._by_id.get(token_id)
        if memo is not None and memo[0] > now:
            return memo[1]
        async with self.db.session() as s:
            token = await token_queries.live_token(s, token_id)
            principal = (Principal(token.id, token.name, tuple(token.scopes))
                         if token is not None else None)
        if len(self._by_id) > _MEMO_LIMIT:
            self._by_id.clear()
        self._by_id[token_id] = (now + _ISSUER_SECONDS, principal)
        return principal

    async def list(self, include_revoked: bool = False) -> list[TokenView]:
        async with self.db.session() as s:
            return [TokenView.of(t) for t in await token_queries.list_tokens(s, include_revoked)]

    async def revoke(self, token_id: int) -> TokenView:
        async with self.db.session() as s:
            token = await token_queries.revoke_token(s, token_id)
        self._memo.clear()
        self._by_id.pop(token_id, None)
        return TokenView.of(token)
