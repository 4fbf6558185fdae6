"""Where errors become HTTP answers: the one place status codes and shapes are decided.

Each protocol is a ``Mount`` of its own in ``server/app.py`` and gets its own set of
exception handlers from here, so the route decides the shape, never the URL text:

- the JSON API (``/api``, :data:`JSON_API`) answers ``{"error": {"type", "message",
  ...}}``; FastAPI's request validation becomes the same shape, a 400 ``InvalidInput``
  whose one-sentence message names the field (never FastAPI's 422 ``{"detail": ...}``);
- the OCI registry (``/v2``, :data:`OCI`) answers its ``{"errors": [...]}`` envelope;
- the Nix cache protocol and the registry's token and build pages (:data:`PLAIN`)
  answer plain text: Nix prints the body of a failed request;
- the web pages answer a page in the site's look (:func:`page_handlers`).

Unexpected exceptions are logged here with their traceback and answered with a 500
in the protocol's shape that leaks nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
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
    ProviderError,
    StorageError,
    Unauthorized,
)
from nixfarm.wire.errors import ErrorOut

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
        case NixError() | ProviderError():
            return 502
        case StorageError() | ConfigError():
            return 500
    return 500


def _headers(error: NixfarmError) -> dict[str, str]:
    if isinstance(error, Unauthorized):
        return {"WWW-Authenticate": f'Basic realm="{error.realm}"'}
    return {}


def _message(error: NixfarmError, status: int) -> str:
    if status >= 500 and not isinstance(error, NixError | ProviderError):
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


# --- what FastAPI and Starlette raise themselves ----------------------------------------

_LOCATIONS = {"query": "query parameter", "path": "path parameter", "header": "header",
              "cookie": "cookie", "body": "field"}


def invalid_request(exc: RequestValidationError) -> InvalidInput:
    """FastAPI's validation error as one sentence naming the first bad field."""
    problems = list(exc.errors())
    if not problems:
        return InvalidInput("the request is not valid", field="body")
    first = problems[0]
    where, *rest = [str(part) for part in first.get("loc", ("body",))] or ["body"]
    name = ".".join(rest)
    why = str(first.get("msg", "is not valid")).removeprefix("Value error, ")
    why = why[:1].lower() + why[1:]
    if first.get("type") == "json_invalid":
        message, name = f"the request body is not valid JSON: {why}", "body"
    elif name:
        message = f"{_LOCATIONS.get(where, where)} {name!r}: {why}"
    else:
        message, name = f"the request body: {why}", "body"
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
    return InvalidInput(message, field=name)


def from_http(request: Request, exc: HTTPException) -> NixfarmError:
    """A 404 or 405 of the router (no such route, method) in the error tree's words."""
    if exc.status_code == 404:
        return NotFound(f"there is nothing at {request.url.path}", kind="route",
                        name=request.url.path)
    if exc.status_code == 405:
        return InvalidInput(f"{request.method} is not allowed on {request.url.path}",
                            field="method")
    return InvalidInput(str(exc.detail), field="request")


def _status_response(response: Response, exc: HTTPException) -> Response:
    """Keep the router's own status (405) and headers (``Allow``) on a mapped answer."""
    response.status_code = exc.status_code
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


Handler = Callable[[Request, Any], Coroutine[Any, Any, Response]]


def _handlers(render: Callable[[Request, NixfarmError], Response],
              internal: Callable[[Request], Response]) -> dict[int | type[Exception], Handler]:
    """The exception handlers of one protocol, given how it renders an error."""

    async def nixfarm_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, NixfarmError)
        return render(request, exc)

    async def validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return render(request, invalid_request(exc))

    async def http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _status_response(render(request, from_http(request, exc)), exc)

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return internal(request)

    return {NixfarmError: nixfarm_error, RequestValidationError: validation,
            HTTPException: http, Exception: unexpected}


#: The JSON API's handlers (``/api``).
JSON_API = _handlers(lambda request, e: as_json(e), lambda request: JSONResponse(
    {"error": {"type": "InternalError", "message": "internal server error"}}, 500))
#: The OCI registry's handlers (``/v2``).
OCI = _handlers(oci, lambda request: JSONResponse(
    {"errors": [{"code": "UNKNOWN", "message": "internal server error", "detail": {}}]}, 500))
#: Plain text: the Nix cache protocol, the registry's token and build pages.
PLAIN = _handlers(lambda request, e: plain(e),
                  lambda request: PlainTextResponse("internal server error\n", 500))



#: How the web pages draw an error: (request, status, one-sentence message) -> a page.
PageRenderer = Callable[[Request, int, str], Response]


def page_handlers(render: PageRenderer) -> dict[int | type[Exception], Handler]:
    """The web pages' handlers: the status and message decided here, the page drawn by
    ``render`` (``server/pages/site.py``, in the site's look). No ``WWW-Authenticate``:
    a browser would answer it with its own password prompt instead of the sign-in page.
    """

    def page(request: Request, error: NixfarmError) -> Response:
        status = status_of(error)
        if status >= 500:
            log.error("page %s failed: %s", request.url.path, error.message)
        return render(request, status, _message(error, status))

    return _handlers(page, lambda request: render(request, 500, "internal server error"))


# --- what the OpenAPI document says of errors ------------------------------------------


_MEANINGS = {
    400: "Bad input: the message names the field.",
    401: "No token, or a token that is unknown, revoked or expired.",
    403: "The token lacks the scope this needs.",
    404: "No such object (or one the token may not see).",
    409: "The object exists, or its state forbids the change.",
}
#: The error answers every JSON API route may give, for the OpenAPI document.
API_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorOut, "description": meaning} for status, meaning in _MEANINGS.items()
}
