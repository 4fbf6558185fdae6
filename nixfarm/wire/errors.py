"""The error answer of the JSON API, as every route documents it in the OpenAPI document.

``nixfarm.server.errors`` writes it, ``nixfarm.client.connection`` reads it back into
the error tree.
"""

from __future__ import annotations

from nixfarm.wire.base import Wire


class ErrorDetail(Wire):
    """``type`` is the class of ``nixfarm.errors`` the server raised; the other fields
    are that error's, when it has them."""

    type: str
    message: str
    field: str | None = None
    kind: str | None = None
    name: str | None = None
    scope: str | None = None
    drv: str | None = None


class ErrorOut(Wire):
    """Every error answer of ``/api/v1``: ``{"error": {...}}``, status 400 to 409."""

    error: ErrorDetail
