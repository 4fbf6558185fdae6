"""Wire models of the tokens API (``/api/v1/tokens``, ``/api/v1/whoami``).

Field names are the JSON names.
"""

from __future__ import annotations

from datetime import datetime

from nixfarm.wire.base import Wire


class TokenCreate(Wire):
    """POST /api/v1/tokens (admin)."""

    name: str
    scopes: list[str]
    expires_at: datetime | None = None
    #: A runner token's pool: its runners claim only jobs of these images and of these
    #: owners (token names); null is any. ``trusted: false``: never jobs with secrets.
    runner_images: list[str] | None = None
    runner_owners: list[str] | None = None
    trusted: bool = True


class TokenPool(Wire):
    """PATCH /api/v1/tokens/{id} (admin): change a runner token's pool, as a JSON merge
    patch: a field left out stays as it is; ``null`` for a list is any (no constraint).
    Takes effect at its runners' next claim."""

    runner_images: list[str] | None = None
    runner_owners: list[str] | None = None
    trusted: bool | None = None


class TokenOut(Wire):
    """GET /api/v1/tokens (admin); ``secret`` only in the answer to its creation."""

    id: int
    name: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked: bool
    last_used_at: datetime | None
    runner_images: list[str] | None = None
    runner_owners: list[str] | None = None
    trusted: bool = True
    secret: str | None = None


class WhoAmI(Wire):
    """GET /api/v1/whoami."""

    name: str | None
    scopes: list[str]
