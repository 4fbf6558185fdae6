"""The web UI's sign-in sessions: a browser's hold on a token, for a while.

A person signs in with a token (or through OpenID Connect, which maps them to a
token); the server stores a session row and gives the browser a cookie holding the
session's secret. Every request resolves the cookie to the token's ``Principal``, so a
signed-in page sees exactly what that token sees through the API, and revoking the
token ends its sessions. Only a hash of the secret is stored (as for tokens). Signing
out deletes the row; an expired row is as good as gone, and deleted when next seen or
at the next sign-in.

Each session has its own CSRF token, which its forms carry (``server/pages/site.py``).
A session is remembered for a second or two per server, which bounds how long one that
was ended through another server keeps working there.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from cachetools import TTLCache

from nixfarm.db.engine import Database
from nixfarm.db.models import WebSession, utcnow
from nixfarm.tokens import Principal, TokenService

#: What a session cookie's secret starts with (a token's starts with ``nf_``).
PREFIX = "nfs_"
_MEMO_SECONDS = 2.0
_MEMO_LIMIT = 10_000


@dataclass(frozen=True)
class Session:
    """A live session and who it is."""

    id: int
    principal: Principal
    #: The CSRF token its forms carry.
    csrf: str
    method: str
    subject: str | None
    expires_at: datetime


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class SessionService:
    def __init__(self, db: Database, tokens: TokenService, lifetime: timedelta) -> None:
        self.db = db
        self.tokens = tokens
        self.lifetime = lifetime
        self._memo: TTLCache[str, WebSession | None] = TTLCache(
            maxsize=_MEMO_LIMIT, ttl=_MEMO_SECONDS)

    async def open(self, token_id: int, method: str, subject: str | None = None
                   ) -> tuple[Session, str]:
        """A new session holding token ``token_id``; returns it and the cookie's secret."""
        principal = await self.tokens.by_id(token_id)
        if principal is None:
            raise ValueError(f"token {token_id} is not live")  # callers checked it was
        secret = PREFIX + secrets.token_urlsafe(32)
        row = WebSession(secret_hash=_hash(secret), token_id=token_id,
                         csrf=secrets.token_urlsafe(32), method=method, subject=subject,
                         created_at=utcnow(), expires_at=utcnow() + self.lifetime)
        async with self.db.session() as s:
            s.add(row)
            await s.flush()
        await self.purge()  # sign-ins are rare: each clears the sessions that expired
        return self._view(row, principal), secret

    async def resolve(self, secret: str) -> Session | None:
        """The live session whose cookie holds ``secret``; None when there is none (never
        was, signed out, expired, or its token revoked or expired)."""
        if not secret.startswith(PREFIX) or len(secret) > 100:
            return None
        row: WebSession | None
        try:
            row = self._memo[secret]
        except KeyError:
            async with self.db.session() as s:
                row = await s.scalar(sa.select(WebSession).where(
                    WebSession.secret_hash == _hash(secret)))
            self._memo[secret] = row
        if row is None:
            return None
        if row.expires_at <= utcnow():
            await self._delete(secret)
            return None
        principal = await self.tokens.by_id(row.token_id)
        return self._view(row, principal) if principal is not None else None

    async def close(self, secret: str) -> None:
        """Sign out: the session ends on this server at once, on others within seconds."""
        await self._delete(secret)

    async def _delete(self, secret: str) -> None:
        async with self.db.session() as s:
            await s.execute(sa.delete(WebSession).where(WebSession.secret_hash == _hash(secret)))
        with contextlib.suppress(KeyError):
            del self._memo[secret]

    async def purge(self) -> int:
        """Delete expired sessions; how many were."""
        async with self.db.session() as s:
            done = await s.execute(sa.delete(WebSession).where(WebSession.expires_at <= utcnow()))
        return int(getattr(done, "rowcount", 0) or 0)

    @staticmethod
    def _view(row: WebSession, principal: Principal) -> Session:
        return Session(row.id, principal, row.csrf, row.method, row.subject, row.expires_at)
