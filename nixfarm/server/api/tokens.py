"""Tokens over the JSON API (admin only), and who-am-I for any caller."""

from __future__ import annotations

from fastapi import APIRouter, Request

from nixfarm.scopes import ADMIN
from nixfarm.server.auth import farm_of, principal, require
from nixfarm.tokens import TokenView, future_expiry
from nixfarm.wire.base import Id
from nixfarm.wire.tokens import TokenCreate, TokenOut, TokenPool, WhoAmI

router = APIRouter(prefix="/v1", tags=["tokens"])


def _out(token: TokenView, secret: str | None = None) -> TokenOut:
    return TokenOut(id=token.id, name=token.name, scopes=list(token.scopes),
                    created_at=token.created_at, expires_at=token.expires_at,
                    revoked=token.revoked, last_used_at=token.last_used_at,
                    runner_images=_list(token.runner_images),
                    runner_owners=_list(token.runner_owners), trusted=token.trusted,
                    secret=secret)


def _list(values: tuple[str, ...] | None) -> list[str] | None:
    return list(values) if values is not None else None


@router.post("/tokens", status_code=201)
async def create_token(request: Request, body: TokenCreate) -> TokenOut:
    await require(request, ADMIN)
    token, secret = await farm_of(request).tokens.create(
        body.name, body.scopes, future_expiry(body.expires_at),
        body.runner_images, body.runner_owners, body.trusted)
    return _out(token, secret)


@router.get("/tokens")
async def list_tokens(request: Request, include_revoked: bool = False) -> list[TokenOut]:
    await require(request, ADMIN)
    return [_out(t) for t in await farm_of(request).tokens.list(include_revoked)]


@router.patch("/tokens/{token_id}")
async def update_token_pool(request: Request, token_id: Id, body: TokenPool) -> TokenOut:
    """Change a runner token's pool (a merge patch: fields left out stay, ``null`` for a
    list is any); its runners' next claims follow it."""
    await require(request, ADMIN)
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    return _out(await farm_of(request).tokens.update_pool(token_id, changes))


@router.delete("/tokens/{token_id}")
async def revoke_token(request: Request, token_id: Id) -> TokenOut:
    await require(request, ADMIN)
    return _out(await farm_of(request).tokens.revoke(token_id))


@router.get("/whoami")
async def whoami(request: Request) -> WhoAmI:
    who = await principal(request)
    return WhoAmI(name=who.name if who else None, scopes=list(who.scopes) if who else [])
