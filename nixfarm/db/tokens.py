"""Queries on API tokens.

A token's secret is ``nf_`` followed by 32 random bytes in URL-safe base64: safe in a
header, a netrc password and a URL. It is shown once, at creation; the database keeps
only its SHA-256, so a leaked database does not leak usable tokens. Authentication
hashes the presented secret and looks the hash up through a unique index; comparing
in constant time is unnecessary because an attacker timing that lookup learns about
a hash of their own guess, never about a stored secret.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from nixfarm.db.models import Token, utcnow
from nixfarm.errors import Conflict, InvalidInput, NotFound
from nixfarm.scopes import ADMIN, RUNNER, parse_scope

PREFIX = "nf_"
# last_used_at is for humans ("used 3 minutes ago"); writing it on every request
# would turn every authenticated read into a write.
_LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def create_token(
    session: AsyncSession,
    name: str,
    scopes: Iterable[str],
    expires_at: datetime | None = None,
    runner_images: Iterable[str] | None = None,
    runner_owners: Iterable[str] | None = None,
    trusted: bool = True,
) -> tuple[Token, str]:
    """Create a token; returns it and its secret, which is not stored and not shown again.

    ``runner_images``/``runner_owners`` (None: any) and ``trusted`` narrow what the
    runners of a ``runner`` token claim; they mean nothing on other tokens, so they are
    refused there rather than silently kept.
    """
    name = name.strip()
    if not name or len(name) > 100:
        raise InvalidInput("A token needs a name of 1-100 characters.", field="name")
    checked = list(dict.fromkeys(parse_scope(scope) for scope in scopes))
    if not checked:
        raise InvalidInput("A token needs at least one scope.", field="scopes")
    images = _pool("runner_images", runner_images)
    owners = _pool("runner_owners", runner_owners)
    if (images is not None or owners is not None or not trusted) and RUNNER not in checked:
        raise InvalidInput("Images, owners and untrusted narrow a runner token; this token "
                           "has no runner scope.", field="scopes")
    secret = PREFIX + secrets.token_urlsafe(32)
    token = Token(
        name=name,
        secret_hash=hash_secret(secret),
        scopes=checked,
        expires_at=expires_at,
        revoked=False,
        runner_images=images,
        runner_owners=owners,
        trusted=trusted,
    )
    session.add(token)
    await session.flush()
    return token, secret


#: A pool field left as it is by ``update_pool``.
UNCHANGED: object = object()


async def update_pool(
    session: AsyncSession,
    token_id: int,
    runner_images: object = UNCHANGED,
    runner_owners: object = UNCHANGED,
    trusted: bool | None = None,
) -> Token:
    """Change a runner token's pool; what is not given stays (None for a list: any).

    Its runners read the pool at every claim (``builds.runners``), so the change holds
    from their next claim on; a job already claimed keeps running where it is.
    ``NotFound`` without such a token; a revoked token or one without the runner
    scope is refused (``InvalidInput``), as empty or unprintable names are.
    """
    token = await get_token(session, token_id)
    if RUNNER not in token.scopes:
        raise InvalidInput(f"Token {token_id} ({token.name}) has no runner scope: only a "
                           "runner token has a pool.", field="scopes")
    if token.revoked:
        raise InvalidInput(f"Token {token_id} ({token.name}) is revoked.", field="token")
    if runner_images is not UNCHANGED:
        token.runner_images = _pool("runner_images", _names(runner_images))
    if runner_owners is not UNCHANGED:
        token.runner_owners = _pool("runner_owners", _names(runner_owners))
    if trusted is not None:
        token.trusted = trusted
    await session.flush()
    return token


def _names(values: object) -> Iterable[str] | None:
    if values is None:
        return None
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise TypeError(f"a pool is a list of names, not {values!r}")
    return [str(v) for v in values]


def _pool(field: str, values: Iterable[str] | None) -> list[str] | None:
    """The distinct, stripped names of a pool; None (any) stays None, an empty one is
    refused (a runner that may claim nothing is a mistake)."""
    if values is None:
        return None
    checked = list(dict.fromkeys(v.strip() for v in values))
    # Printable only: a NUL is not text to PostgreSQL, and a name nobody can type is a
    # mistake.
    if not checked or any(not v or len(v) > 128 or not v.isprintable() for v in checked):
        raise InvalidInput(f"{field} must list 1 or more names of 1-128 printable "
                           "characters (leave it out for any).", field=field)
    return checked


def is_live(token: Token, now: datetime) -> bool:
    """Not revoked and not expired at ``now``."""
    return not token.revoked and (token.expires_at is None or token.expires_at > now)


async def live_token(session: AsyncSession, token_id: int) -> Token | None:
    """The token with this id while it is live, or None."""
    token = await session.get(Token, token_id)
    return token if token is not None and is_live(token, utcnow()) else None


async def live_tokens_named(session: AsyncSession, name: str) -> list[Token]:
    """The live tokens called ``name`` (names are not unique)."""
    now = utcnow()
    return [t for t in await session.scalars(sa.select(Token).where(Token.name == name))
            if is_live(t, now)]


async def authenticate(
    session: AsyncSession, secret: str, now: datetime | None = None
) -> Token | None:
    """The live (not revoked, not expired) token with this secret, or None."""
    if not secret.startswith(PREFIX):
        return None
    now = now or utcnow()
    token = await session.scalar(sa.select(Token).where(Token.secret_hash == hash_secret(secret)))
    if token is None or not is_live(token, now):
        return None
    if token.last_used_at is None or now - token.last_used_at >= _LAST_USED_RESOLUTION:
        token.last_used_at = now
    return token


async def list_tokens(session: AsyncSession, include_revoked: bool = False) -> list[Token]:
    """Tokens, oldest first."""
    stmt = sa.select(Token).order_by(Token.id)
    if not include_revoked:
        stmt = stmt.where(Token.revoked.is_(False))
    return list(await session.scalars(stmt))


async def get_token(session: AsyncSession, token_id: int) -> Token:
    token = await session.get(Token, token_id)
    if token is None:
        raise NotFound(f"There is no token {token_id}.", kind="token", name=str(token_id))
    return token


async def revoke_token(session: AsyncSession, token_id: int) -> Token:
    """Revoke a token for good (idempotent); ``NotFound`` if there is none.

    The last live admin token is not revoked (``Conflict``): without one, nobody could
    create tokens again. Concurrent revocations of the last two are serialised by
    locking the live admin rows (PostgreSQL; SQLite has one writer anyway).
    """
    token = await get_token(session, token_id)
    if not token.revoked and ADMIN in token.scopes and is_live(token, utcnow()):
        admins = [t for t in await session.scalars(
            sa.select(Token).where(Token.revoked.is_(False)).with_for_update())
            if ADMIN in t.scopes and is_live(t, utcnow())]
        if [t.id for t in admins] == [token.id]:
            raise Conflict(
                f"token {token_id} ({token.name}) is the last admin token: revoking it would "
                "leave nobody able to manage the farm; create another admin token first")
    token.revoked = True
    await session.flush()
    return token
