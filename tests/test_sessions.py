"""Web sessions on a real database (SQLite and PostgreSQL): a session is its token's
principal while both live, and nothing after it expires, ends or its token goes."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from nixfarm.db.engine import Database
from nixfarm.db.models import WebSession
from nixfarm.sessions import SessionService
from nixfarm.tokens import TokenService


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


pytestmark = pytest.mark.anyio


async def test_a_session_is_its_tokens_principal_until_it_ends(db: Database) -> None:
    tokens = TokenService(db)
    token, _ = await tokens.create("ada", ["jobs:submit"])
    sessions = SessionService(db, tokens, timedelta(hours=1))
    opened, secret = await sessions.open(token.id, "token")
    found = await sessions.resolve(secret)
    assert found is not None and found.principal.name == "ada"
    assert found.principal.scopes == ("jobs:submit",) and found.csrf == opened.csrf
    async with db.session() as s:  # only a hash of the secret is stored
        row = await s.scalar(sa.select(WebSession))
    assert row is not None and secret not in (row.secret_hash, row.csrf)
    assert await sessions.resolve(secret + "x") is None
    assert await sessions.resolve("nf_a-token-is-not-a-session") is None
    await sessions.close(secret)
    assert await sessions.resolve(secret) is None
    # Another server, with its own memo, sees the row gone too.
    assert await SessionService(db, tokens, timedelta(hours=1)).resolve(secret) is None


async def test_an_expired_session_is_nothing_and_is_deleted(db: Database) -> None:
    tokens = TokenService(db)
    token, _ = await tokens.create("ada", ["jobs:submit"])
    gone = SessionService(db, tokens, timedelta(seconds=-1))
    _, secret = await gone.open(token.id, "oidc", "ada@example.org")
    assert await gone.resolve(secret) is None
    async with db.session() as s:
        assert await s.scalar(sa.select(sa.func.count(WebSession.id))) == 0
    live = SessionService(db, tokens, timedelta(hours=1))
    _, kept = await live.open(token.id, "token")
    # Expired at birth: the purge of its own sign-in takes it; the live one stays.
    _, other = await gone.open(token.id, "token")
    async with db.session() as s:
        assert await s.scalar(sa.select(sa.func.count(WebSession.id))) == 1
    assert await gone.purge() == 0
    assert await gone.resolve(other) is None and await live.resolve(kept) is not None


async def test_revoking_the_token_ends_its_sessions(db: Database) -> None:
    tokens = TokenService(db)
    token, _ = await tokens.create("ada", ["jobs:submit"])
    sessions = SessionService(db, tokens, timedelta(hours=1))
    _, secret = await sessions.open(token.id, "token")
    await tokens.revoke(token.id)
    assert await sessions.resolve(secret) is None
