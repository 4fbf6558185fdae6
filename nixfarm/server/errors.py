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


def _oci_code(error: NixfarmError) -> tuple[str, int]:
    """The distribution spec's error code (and status) for ``error``."""
    match error:
        case NotFound(kind="blob"):
            return "BLOB_UNKNOWN", 404
        case NotFound(kind="manifest" | "package"):
            return "MANIFEST_UNKNOWN", 404
        case NotFound():
            return "NAME_UNKNOWN", 404
        case InvalidInput(field="name"):
            return "NAME_INVALID", 400
        case InvalidInput(field="tag"):
            return "TAG_INVALID", 400
        case InvalidInput(field="digest"):
            return "DIGEST_INVALID", 400
        case InvalidInput():
            return "UNSUPPORTED", 400
        case Unauthorized():
            return "UNAUTHORIZED", 401
        case Forbidden():
            return "DENIED", 403
        case NixTimeout():  # not in the spec: a build that ran out of time is its own case
            return "BUILD_TIMEOUT", 504
        case NixError():
            return "BUILD_FAILED", 502
        case ConfigError(key=key) if key.startswith("registry"):
            return "UNAVAILABLE", 503
    return "UNKNOWN", 500


def oci(request: Request, error: NixfarmError) -> Response:
    """The registry's ``{"errors": [{"code", "message", "detail"}]}`` envelope."""
    code, status = _oci_code(error)
    message = error.message if code != "UNKNOWN" else "internal server error"
    if status >= 500:
        log.error("registry request %s failed: %s", request.url.path, error.message)
    detail: dict[str, object] = {}
    for name in ("field", "kind", "name", "scope", "drv", "seconds"):
        value = getattr(error, name, "")
        if value and code != "UNKNOWN":
            detail[name] = value
    if isinstance(error, NixError) and error.log_tail:
        detail["log_tail"] = error.log_tail[-20:]
    headers: dict[str, str] = {}
    if isinstance(error, Unauthorized):
        # The token flow docker, podman and skopeo follow: they fetch a token from the
        # realm with the user's credentials, then retry with it as a bearer token.
        # The configured URL, never the request's Host header: a client must not be
        # sent to fetch tokens, with the user's credentials, from a host an attacker named.
        realm = request.app.state.farm.settings.base_url + "/registry/token"
        challenge = f'Bearer realm="{realm}",service="nixfarm"'
        repository = request.path_params.get("name")
        if repository:
            challenge += f',scope="repository:{repository}:pull"'
        headers["WWW-Authenticate"] = challenge
    body = {"errors": [{"code": code, "message": message, "detail": detail}]}
    return JSONResponse(body, status, headers=headers)


async def handle(request: Request, exc: Exception) -> Response:
    """Starlette exception handler: the protocol is chosen by the URL."""
    assert isinstance(exc, NixfarmError)
    if request.url.path.startswith("/api/"):
        return as_json(exc)
    if request.url.path == "/v2" or request.url.path.startswith("/v2/"):
        return oci(request, exc)
    return plain(exc)
