from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from nixfarm.db import tokens
from nixfarm.db.engine import Database
from nixfarm.db.models import Token
from nixfarm.errors import InvalidInput, NotFound

pytestmark = pytest.mark.anyio


async def test_create_returns_the_secret_once_and_stores_its_hash(db: Database) -> None:
    async with db.session() as session:
        token, secret = await tokens.create_token(
            session, "ci", ["cache:main:push", "jobs:submit", "cache:main:push"]
        )
    assert secret.startswith("nf_")
    assert len(secret) == 3 + 43  # 32 bytes of URL-safe base64, unpadded
    async with db.session() as session:
        stored = await session.scalar(sa.select(Token).where(Token.id == token.id))
    assert stored is not None
    assert stored.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in (stored.secret_hash, stored.name)
    assert stored.scopes == ["cache:main:push", "jobs:submit"]
    assert (stored.name, stored.revoked, stored.expires_at, stored.last_used_at) == (
        "ci",
        False,
        None,
        None,
    )


async def test_secrets_differ(db: Database) -> None:
    async with db.session() as session:
        _, one = await tokens.create_token(session, "a", ["runner"])
        _, two = await tokens.create_token(session, "a", ["runner"])
    assert one != two


@pytest.mark.parametrize(
    ("name", "scopes", "field"),
    [
        ("ci", ["cache:main:delete"], "scopes"),
        ("ci", ["superuser"], "scopes"),
        ("ci", [], "scopes"),
        ("  ", ["admin"], "name"),
        ("x" * 101, ["admin"], "name"),
    ],
)
async def test_create_rejects_bad_input(
    db: Database, name: str, scopes: list[str], field: str
) -> None:
    async with db.session() as session:
        with pytest.raises(InvalidInput) as info:
            await tokens.create_token(session, name, scopes)
    assert info.value.field == field


async def test_authenticate(db: Database) -> None:
    async with db.session() as session:
        token, secret = await tokens.create_token(session, "ci", ["admin"])
    async with db.session() as session:
        found = await tokens.authenticate(session, secret)
        assert found is not None
        assert (found.id, found.scopes) == (token.id, ["admin"])
        assert await tokens.authenticate(session, secret + "x") is None
        assert await tokens.authenticate(session, secret[3:]) is None
        assert await tokens.authenticate(session, "") is None


async def test_expired_tokens_do_not_authenticate(db: Database) -> None:
    expiry = datetime(2030, 1, 1, tzinfo=UTC)
    async with db.session() as session:
        _, secret = await tokens.create_token(session, "short", ["runner"], expires_at=expiry)
    async with db.session() as session:
        ok = await tokens.authenticate(session, secret, now=expiry - timedelta(seconds=1))
        assert ok is not None
        assert ok.expires_at == expiry
        assert await tokens.authenticate(session, secret, now=expiry) is None


async def test_revoked_tokens_do_not_authenticate(db: Database) -> None:
    async with db.session() as session:
        token, secret = await tokens.create_token(session, "ci", ["runner"])
    async with db.session() as session:
        revoked = await tokens.revoke_token(session, token.id)
        assert revoked.revoked
    async with db.session() as session:
        assert await tokens.authenticate(session, secret) is None
        # Revoking twice is fine.
        await tokens.revoke_token(session, token.id)


async def test_revoke_missing_is_not_found(db: Database) -> None:
    async with db.session() as session:
        with pytest.raises(NotFound) as info:
            await tokens.revoke_token(session, 12345)
    assert (info.value.kind, info.value.name) == ("token", "12345")


async def test_last_used_is_recorded_at_most_once_a_minute(db: Database) -> None:
    t0 = datetime(2031, 5, 1, 12, 0, tzinfo=UTC)
    async with db.session() as session:
        token, secret = await tokens.create_token(session, "ci", ["runner"])

    async def use(at: datetime) -> datetime | None:
        async with db.session() as session:
            assert await tokens.authenticate(session, secret, now=at) is not None
        async with db.session() as session:
            stored = await session.get(Token, token.id)
            assert stored is not None
            return stored.last_used_at

    assert await use(t0) == t0
    assert await use(t0 + timedelta(seconds=30)) == t0
    assert await use(t0 + timedelta(seconds=61)) == t0 + timedelta(seconds=61)


async def test_list_tokens(db: Database) -> None:
    async with db.session() as session:
        first, _ = await tokens.create_token(session, "first", ["runner"])
        second, _ = await tokens.create_token(session, "second", ["admin"])
        await tokens.revoke_token(session, first.id)
    async with db.session() as session:
        assert [t.name for t in await tokens.list_tokens(session)] == ["second"]
        everything = await tokens.list_tokens(session, include_revoked=True)
        assert [(t.id, t.revoked) for t in everything] == [(first.id, True), (second.id, False)]
