"""Short-lived registry pull tokens: what ``/registry/token`` hands out.

In Docker's token flow a client logs in at the token endpoint and gets back a bearer
token for the pulls that follow. Handing back the caller's own nixfarm token would
give every client's auth cache a long-lived credential; instead the endpoint mints a
token that can only pull, and only for ``registry.token_seconds`` (300 s by default):

    nfr_<payload>.<mac>
        payload = base64url(JSON {"scope": "registry:pull", "tid": <issuer id>,
                                  "exp": <unix seconds>})
        mac     = base64url(HMAC-SHA256(key, "nfr_" + payload))

The ``nfr_`` prefix tells it apart from a nixfarm token (``nf_``) without any lookup;
the MAC covers the prefix too. The key is 32 random bytes every server of the farm
shares (``[keys] registry_token``; nixfarm/farmkeys.py), so each accepts the others'
tokens.

Verifying checks, in order: the MAC (in constant time), the expiry (wall clock, since a
token minted by one server is checked by another), then the issuing token, which must
still exist, be unrevoked and unexpired, and hold ``registry:pull``: revoking it
revokes every pull token it minted. That last check is a primary-key lookup remembered
for one second per issuing token, so a busy pull costs at most one query a second and
a revocation takes effect within that second on every server.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import time

from nixfarm.errors import Unauthorized
from nixfarm.scopes import REGISTRY_PULL, allows
from nixfarm.tokens import Principal, TokenService

PREFIX = "nfr_"


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def is_pull_token(secret: str) -> bool:
    """Whether ``secret`` is shaped like a pull token (no check of its MAC)."""
    return secret.startswith(PREFIX)


def _mac(key: bytes, signed: str) -> bytes:
    return hmac.new(key, signed.encode(), hashlib.sha256).digest()


def mint(key: bytes, token_id: int, seconds: int, now: float | None = None) -> str:
    """A pull token for the nixfarm token ``token_id``, valid for at least ``seconds``."""
    now = time.time() if now is None else now
    claims = {"scope": REGISTRY_PULL, "tid": token_id, "exp": math.ceil(now) + seconds}
    signed = PREFIX + _b64encode(json.dumps(claims, separators=(",", ":")).encode())
    return f"{signed}.{_b64encode(_mac(key, signed))}"


def issuer(key: bytes, token: str, now: float | None = None) -> int:
    """The issuing token's id if ``token`` is genuine and unexpired, else Unauthorized.

    Pure: no database. ``PullTokens.verify`` adds the check that the issuer is live.
    """
    invalid = Unauthorized("the registry token is not valid; fetch a new one from "
                           "/registry/token")
    signed, dot, mac_text = token.partition(".")
    if not dot or not signed.startswith(PREFIX):
        raise invalid
    try:
        mac = _b64decode(mac_text)
    except (binascii.Error, ValueError):
        raise invalid from None
    # Nothing in the claims is looked at before the MAC vouches for them.
    if not hmac.compare_digest(mac, _mac(key, signed)):
        raise invalid
    claims = json.loads(_b64decode(signed.removeprefix(PREFIX)))
    tid, exp = claims.get("tid"), claims.get("exp")
    if claims.get("scope") != REGISTRY_PULL or type(tid) is not int or type(exp) is not int:
        raise invalid
    if (time.time() if now is None else now) >= exp:
        raise Unauthorized("the registry token has expired; fetch a new one from "
                           "/registry/token")
    return tid


class PullTokens:
    """Pull tokens signed with ``key`` (the farm's, see nixfarm/farmkeys.py); ``tokens``
    knows their issuers."""

    def __init__(self, key: bytes, tokens: TokenService) -> None:
        self.key = key
        self.tokens = tokens

    def mint(self, token_id: int, seconds: int, now: float | None = None) -> str:
        return mint(self.key, token_id, seconds, now)

    async def verify(self, token: str) -> Principal:
        """Who pulls with ``token``: Unauthorized if tampered, expired, or its issuer is gone."""
        token_id = issuer(self.key, token)
        found = await self.tokens.by_id(token_id)
        if found is None or not allows(found.scopes, REGISTRY_PULL):
            raise Unauthorized("the token this registry token was issued for is revoked, "
                               "expired or lacks scope 'registry:pull'")
        return Principal(token_id, found.name, (REGISTRY_PULL,))
