"""Where errors become HTTP answers: the one place status codes are decided.

The Nix cache protocol gets plain text (Nix prints the body of a failed request),
the JSON API gets ``{"error": {...}}``, the OCI registry its ``{"errors": [...]}``
envelope. Unexpected exceptions are logged with their traceback and answered with
a bare 500 that leaks nothing.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from nixfarm.errors import (
    ConfigError,
    Conflict,
    Forbidden,
    InvalidInput,
    NixError,
    NixfarmError,
    NixTimeout,
    NotFound,
    StorageError,
    Unauthorized,
)

log = logging.getLogger("nixfarm.server")


def status_of(error: NixfarmError) -> int:
    match error:
        case NotFound():
            return 404
        case Unauthorized():
            return 401
        case Forbidden():
            return 403
        case Conflict():
            return 409
        case InvalidInput():
            return 400
        case NixTimeout():
            return 504
        case NixError():
            return 502
        case StorageError() | ConfigError():
            return 500
    return 500


def _headers(error: NixfarmError) -> dict[str, str]:
    if isinstance(error, Unauthorized):
        return {"WWW-Authenticate": f'Basic realm="{error.realm}"'}
    return {}


def _message(error: NixfarmError, status: int) -> str:
    if status >= 500 and not isinstance(error, NixError):
        return "internal server error"
    return error.message


def plain(error: NixfarmError) -> Response:
    status = status_of(error)
    if status >= 500:
        log.error("request failed: %s", error.message)
    return PlainTextResponse(_message(error, status) + "\n", status, headers=_headers(error))


def as_json(error: NixfarmError) -> Response:
    status = status_of(error)
    if status >= 500:
        log.error("request failed: %s", error.message)
    body: dict[str, object] = {"type": type(error).__name__, "message": _message(error, status)}
    for name in ("field", "kind", "name", "scope", "drv"):
        value = getattr(error, name, "")
        if value:
            body[name] = value
    return JSONResponse({"error": body}, status, headers=_headers(error))


async def handle(request: Request, exc: Exception) -> Response:
    """Starlette exception handler: the protocol is chosen by the URL."""
    assert isinstance(exc, NixfarmError)
    if request.url.path.startswith("/api/"):
        return as_json(exc)
    return plain(exc)
