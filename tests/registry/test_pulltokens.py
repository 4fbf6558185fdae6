"""Pull tokens: the shared key file, minting, and every way a token is refused."""

from __future__ import annotations

import base64
import json
import time
from datetime import timedelta
from pathlib import Path

import pytest

from nixfarm import config
from nixfarm.db import tokens as token_queries
from nixfarm.db.engine import Database
from nixfarm.db.models import utcnow
from nixfarm.errors import ConfigError, Unauthorized
from nixfarm.registry import pulltokens
from nixfarm.registry.pulltokens import PullTokens, issuer, mint
from nixfarm.tokens import Principal, TokenService

KEY = bytes(range(32))


def _claims(token: str) -> dict[str, object]:
    payload = token.partition(".")[0].removeprefix(pulltokens.PREFIX)
    decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(payload + "=="))
    return decoded


def test_a_minted_token_names_its_issuer_and_lasts_at_least_its_lifetime() -> None:
    now = 1_700_000_000.5
    token = mint(KEY, 42, 300, now)
    assert pulltokens.is_pull_token(token) and not pulltokens.is_pull_token("nf_abc")
    assert _claims(token) == {"scope": "registry:pull", "tid": 42, "exp": 1_700_000_301}
    assert issuer(KEY, token, now + 300) == 42
    with pytest.raises(Unauthorized, match="expired"):
        issuer(KEY, token, now + 301)


def _forged(token: str, **changes: object) -> str:
    """``token`` with its claims changed and its MAC kept."""
    claims = {**_claims(token), **changes}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{pulltokens.PREFIX}{payload}.{token.partition('.')[2]}"


def test_tampered_and_foreign_tokens_are_refused() -> None:
    token = mint(KEY, 42, 300)
    signed, _, mac = token.partition(".")
    flipped = mac[:5] + ("A" if mac[5] != "A" else "B") + mac[6:]
    for bad in [
        _forged(token, tid=1),  # someone else's issuer
        _forged(token, exp=2**40),  # a longer life
        f"{signed}.{flipped}",
        mint(bytes(32), 42, 300),  # another server's key
        signed, f"{signed}.", f"{signed}.!!!", "nfr_", "nfr_.x", "nfr_e30.e30",
        token.replace(pulltokens.PREFIX, "nfx_", 1),
    ]:
        with pytest.raises(Unauthorized, match="not valid"):
            issuer(KEY, bad)


@pytest.mark.anyio
async def test_verify_needs_a_live_issuer_that_may_pull(db: Database, tmp_path: Path) -> None:
    async with db.session() as s:
        puller, _ = await token_queries.create_token(s, "puller", ["registry:pull"])
        admin, _ = await token_queries.create_token(s, "admin", ["admin"])
        cache_only, _ = await token_queries.create_token(s, "cache", ["cache:demo:pull"])
        lapsed, _ = await token_queries.create_token(
            s, "lapsed", ["registry:pull"], expires_at=utcnow() - timedelta(seconds=1))
    minter = PullTokens(KEY, TokenService(db))
    # Whatever the issuer may do, the pull token may only pull.
    assert await minter.verify(minter.mint(puller.id, 60)) == Principal(
        puller.id, "puller", ("registry:pull",))
    assert await minter.verify(minter.mint(admin.id, 60)) == Principal(
        admin.id, "admin", ("registry:pull",))
    for refused in (cache_only.id, lapsed.id, 999_999):
        with pytest.raises(Unauthorized, match="issued for"):
            await minter.verify(minter.mint(refused, 60))

    # Another server on the same data dir accepts it and sees the revocation.
    async with db.session() as s:
        await token_queries.revoke_token(s, puller.id)
    other = PullTokens(KEY, TokenService(db))
    with pytest.raises(Unauthorized, match="revoked"):
        await other.verify(minter.mint(puller.id, 60))
    assert await other.verify(minter.mint(admin.id, 60)) == Principal(
        admin.id, "admin", ("registry:pull",))
    with pytest.raises(Unauthorized, match="expired"):
        await other.verify(minter.mint(admin.id, 1, now=time.time() - 5))


def test_the_lifetime_setting_is_checked() -> None:
    assert config.load(environ={}).registry.token_seconds == 300
    assert config.load(environ={"NIXFARM_REGISTRY__TOKEN_SECONDS": "60"}
                       ).registry.token_seconds == 60
    for bad in ("0", "86401", "soon"):
        with pytest.raises(ConfigError) as caught:
            config.load(environ={"NIXFARM_REGISTRY__TOKEN_SECONDS": bad})
        assert caught.value.key == "registry.token_seconds"
