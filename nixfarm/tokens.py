"""API tokens: creation, and authentication with a short in-memory memo.

Every authenticated request would otherwise cost a database round trip; a token's
validity is remembered for a few seconds, which bounds how long a revoked token
keeps working on a server that did not revoke it itself. Like every memo in nixfarm
it is a ``cachetools.TTLCache``: least recently used out when full, everything out
after its time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from cachetools import TTLCache

from nixfarm.db import tokens as token_queries
from nixfarm.db.engine import Database
from nixfarm.db.models import Token, utcnow
from nixfarm.errors import InvalidInput


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
    runner_images: tuple[str, ...] | None = None
    runner_owners: tuple[str, ...] | None = None
    trusted: bool = True

    @classmethod
    def of(cls, token: Token) -> TokenView:
        return cls(token.id, token.name, tuple(token.scopes), token.created_at,
                   token.expires_at, token.revoked, token.last_used_at,
                   _tuple(token.runner_images), _tuple(token.runner_owners), token.trusted)


def _tuple(values: list[str] | None) -> tuple[str, ...] | None:
    return tuple(values) if values is not None else None


def future_expiry(expires_at: datetime | None) -> datetime | None:
    """A time of expiry a user asked for, in UTC; ``InvalidInput`` if it is already past
    (a token dead at birth is a mistake, most often a wrong year or time zone)."""
    if expires_at is None:
        return None
    # A time without a zone is read as UTC, the zone every timestamp here is in.
    if expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)
    if expires_at <= utcnow():
        raise InvalidInput(
            f"expires_at {expires_at.isoformat()} is in the past; a token must expire "
            "in the future (or not at all).", field="expires_at")
    return expires_at


_MEMO_SECONDS = 5.0
#: Tokens looked up by id (the issuers of registry pull tokens) are remembered more
#: briefly: a revocation through another server takes effect within this.
_ISSUER_SECONDS = 1.0
_MEMO_LIMIT = 10_000


class TokenService:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._memo: TTLCache[str, Principal | None] = TTLCache(
            maxsize=_MEMO_LIMIT, ttl=_MEMO_SECONDS)
        self._by_id: TTLCache[int, Principal | None] = TTLCache(
            maxsize=_MEMO_LIMIT, ttl=_ISSUER_SECONDS)

    async def create(self, name: str, scopes: Iterable[str],
                     expires_at: datetime | None = None,
                     runner_images: Iterable[str] | None = None,
                     runner_owners: Iterable[str] | None = None,
                     trusted: bool = True) -> tuple[TokenView, str]:
        async with self.db.session() as s:
            token, secret = await token_queries.create_token(
                s, name, scopes, expires_at, runner_images, runner_owners, trusted)
            return TokenView.of(token), secret

    async def authenticate(self, secret: str) -> Principal | None:
        with contextlib.suppress(KeyError):  # one lookup: `in` then `[]` could straddle expiry
            return self._memo[secret]
        async with self.db.session() as s:
            token = await token_queries.authenticate(s, secret)
            principal = (Principal(token.id, token.name, tuple(token.scopes))
                         if token is not None else None)
        self._memo[secret] = principal
        return principal

    async def by_id(self, token_id: int) -> Principal | None:
        """The live token with this id (its secret unknown: a pull token's issuer)."""
        with contextlib.suppress(KeyError):
            return self._by_id[token_id]
        async with self.db.session() as s:
            token = await token_queries.live_token(s, token_id)
            principal = (Principal(token.id, token.name, tuple(token.scopes))
                         if token is not None else None)
        self._by_id[token_id] = principal
        return principal

    async def named(self, name: str) -> list[Principal]:
        """The live tokens called ``name`` (an OpenID Connect sign-in's principal)."""
        async with self.db.session() as s:
            return [Principal(t.id, t.name, tuple(t.scopes))
                    for t in await token_queries.live_tokens_named(s, name)]

    async def list(self, include_revoked: bool = False) -> list[TokenView]:
        async with self.db.session() as s:
            return [TokenView.of(t) for t in await token_queries.list_tokens(s, include_revoked)]

    async def update_pool(self, token_id: int, changes: Mapping[str, object]) -> TokenView:
        """Change a runner token's pool: ``changes`` holds the fields given
        (``runner_images``, ``runner_owners``: a list or None for any; ``trusted``)."""
        unknown = set(changes) - {"runner_images", "runner_owners", "trusted"}
        if unknown:
            raise ValueError(f"not fields of a pool: {', '.join(sorted(unknown))}")
        async with self.db.session() as s:
            token = await token_queries.update_pool(
                s, token_id,
                changes.get("runner_images", token_queries.UNCHANGED),
                changes.get("runner_owners", token_queries.UNCHANGED),
                trusted=_flag(changes.get("trusted")))
            return TokenView.of(token)

    async def revoke(self, token_id: int) -> TokenView:
        async with self.db.session() as s:
            token = await token_queries.revoke_token(s, token_id)
        self._memo.clear()
        self._by_id.pop(token_id, None)
        return TokenView.of(token)


def _flag(value: object) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise TypeError(f"trusted is true or false, not {value!r}")
