"""Who is calling: a token as a bearer token or as the password of HTTP basic auth.

Nix sends netrc credentials as basic auth with whatever user name the netrc has, so
the user name is ignored and the password is the token.
"""

from __future__ import annotations

import base64
import binascii

from starlette.requests import HTTPConnection

from nixfarm.cache.service import CacheView
from nixfarm.errors import Forbidden, NotFound, Unauthorized
from nixfarm.farm import Farm
from nixfarm.registry import pulltokens
from nixfarm.scopes import REGISTRY_PULL, allows, cache_scope
from nixfarm.tokens import Principal


def farm_of(conn: HTTPConnection) -> Farm:
    farm = conn.app.state.farm
    assert isinstance(farm, Farm)
    return farm


def credentials(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthorized("the Authorization header is not valid basic auth") from None
        return decoded.partition(":")[2] or None
    raise Unauthorized(f"unsupported authorization scheme {scheme!r}; use Bearer or Basic")


async def principal(conn: HTTPConnection) -> Principal | None:
    """The caller's token, None when no credentials were sent; Unauthorized if unknown."""
    secret = credentials(conn)
    if secret is None:
        return None
    found = await farm_of(conn).tokens.authenticate(secret)
    if found is None:
        raise Unauthorized("the token is unknown, revoked or expired")
    return found


async def require(conn: HTTPConnection, scope: str) -> Principal:
    """The caller, if it holds ``scope``; Unauthorized without credentials, else Forbidden."""
    who = await principal(conn)
    if who is None:
        raise Unauthorized(f"this needs a token with scope {scope!r}")
    if not allows(who.scopes, scope):
        raise Forbidden(f"token {who.name!r} lacks scope {scope!r}", scope=scope)
    return who


async def require_pull(conn: HTTPConnection) -> Principal:
    """A registry puller: a nixfarm token with registry:pull, or a pull token.

    Pull tokens (from ``/registry/token``) are accepted here and nowhere else: every
    other route goes through ``require``, which knows only nixfarm tokens.
    """
    secret = credentials(conn)
    if secret is not None and pulltokens.is_pull_token(secret):
        return await farm_of(conn).pull_tokens.verify(secret)
    return await require(conn, REGISTRY_PULL)


def unknown_cache(name: str) -> NotFound:
    """The answer for a cache that is missing, or private to the caller: the same words,
    so that a private cache's existence is not revealed (as attic answers)."""
    return NotFound(f"There is no cache named {name!r} (a private cache needs a token "
                    f"with scope 'cache:{name}:pull').", kind="cache", name=name)


async def readable_cache(conn: HTTPConnection, name: str) -> CacheView:
    """The cache called ``name`` if the caller may read it: a private one needs pull.

    A private cache the caller may not read (no token, an unknown one, one without
    pull) is ``unknown_cache``, a 404 like a missing one; a caller who may read it gets
    the usual 401/403 for what it may not do next (``writable_cache``).
    """
    try:
        cache = await farm_of(conn).caches.get(name)
    except NotFound:
        raise unknown_cache(name) from None
    if cache.private:
        try:
            await require(conn, cache_scope(name, "pull"))
        except (Unauthorized, Forbidden):
            raise unknown_cache(name) from None
    return cache


async def writable_cache(conn: HTTPConnection, name: str) -> CacheView:
    """The cache called ``name`` if the caller may push to it: 404 as ``readable_cache``
    when it may not even read it, then 401/403 without push."""
    cache = await readable_cache(conn, name)
    await require(conn, cache_scope(name, "push"))
    return cache
