"""Token and secret pages: create (a token's secret is shown once), list, revoke.

Tokens are an admin's, as ``/api/v1/tokens`` is; job secrets belong to whoever holds
``jobs:submit`` (each sees and deletes only their own, as ``/api/v1/secrets``). Every
form carries the session's CSRF token (``site.form``). A created token's secret is in
the answer to the POST alone, never stored nor shown again; that answer must not be
cached.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, time

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.responses import Response

from nixfarm.errors import InvalidInput
from nixfarm.scopes import ADMIN, JOBS_SUBMIT, REGISTRY_PULL, RUNNER
from nixfarm.server.auth import farm_of
from nixfarm.server.pages import site
from nixfarm.tokens import future_expiry
from nixfarm.wire.base import Id
from nixfarm.wire.jobs import SecretCreate
from nixfarm.wire.tokens import TokenCreate

router = APIRouter(include_in_schema=False)

#: The scopes offered as checkboxes; cache scopes are typed (they name a cache).
COMMON_SCOPES = (ADMIN, JOBS_SUBMIT, RUNNER, REGISTRY_PULL)
_NO_STORE = {"Cache-Control": "no-store"}
#: The largest secret a form takes (the API's own limit applies after).
MAX_SECRET_BYTES = 1024 * 1024


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def _invalid(e: ValidationError) -> InvalidInput:
    first = e.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "form"
    return InvalidInput(f"{field}: {first['msg']}", field=field)


def _token_request(form: FormData) -> TokenCreate:
    scopes = [s for s in form.getlist("scope") if isinstance(s, str)]
    scopes += _text(form, "more_scopes").replace(",", " ").split()
    if not scopes:
        raise InvalidInput("choose at least one scope", field="scopes")
    expires = _text(form, "expires")
    try:
        expires_at = (datetime.combine(datetime.strptime(expires, "%Y-%m-%d").date(),
                                       time(), UTC) if expires else None)
    except ValueError:
        raise InvalidInput(f"expiry {expires!r} is not a date (YYYY-MM-DD)",
                           field="expires_at") from None
    try:
        return TokenCreate(name=_text(form, "name"), scopes=list(dict.fromkeys(scopes)),
                           expires_at=expires_at)
    except ValidationError as e:
        raise _invalid(e) from None


async def _tokens_page(request: Request, created: tuple[str, str] | None = None,
                       status: int = 200) -> Response:
    tokens = await farm_of(request).tokens.list(include_revoked=True)
    return site.render(request, "tokens.html", {
        "tokens": tokens, "created": created, "common_scopes": COMMON_SCOPES},
        status=status, headers=_NO_STORE if created else None)


@router.get("/tokens")
async def tokens_page(request: Request, who: site.Viewer = site.VIEWER) -> Response:
    who.require(ADMIN)
    return await _tokens_page(request)


@router.post("/tokens")
async def create_token(request: Request, who: site.Viewer = site.VIEWER) -> Response:
    form = await site.form(request, who)
    who.require(ADMIN)
    body = _token_request(form)
    if not body.name:
        raise InvalidInput("a token needs a name", field="name")
    token, secret = await farm_of(request).tokens.create(
        body.name, body.scopes, future_expiry(body.expires_at))
    return await _tokens_page(request, (token.name, secret), status=201)


@router.post("/tokens/{token_id}/revoke")
async def revoke_token(request: Request, token_id: Id, who: site.Viewer = site.VIEWER
                       ) -> Response:
    await site.form(request, who)
    who.require(ADMIN)
    await farm_of(request).tokens.revoke(token_id)
    return site.redirect("/tokens")


# --- secrets -------------------------------------------------------------------------


async def _secret_value(form: FormData) -> bytes:
    upload = form.get("file")
    if isinstance(upload, UploadFile) and upload.filename:
        data = await upload.read(MAX_SECRET_BYTES + 1)
    else:
        value = form.get("value")
        data = value.replace("\r\n", "\n").encode() if isinstance(value, str) else b""
    if not data:
        raise InvalidInput("a secret needs a value: paste it or choose a file", field="data")
    if len(data) > MAX_SECRET_BYTES:
        raise InvalidInput(f"a secret is at most {MAX_SECRET_BYTES} bytes", field="data")
    return data


@router.get("/secrets")
async def secrets_page(request: Request, who: site.Viewer = site.VIEWER) -> Response:
    principal = who.require(JOBS_SUBMIT)
    found = await farm_of(request).builds.secrets.all(principal)
    return site.render(request, "secrets.html", {"secrets": found, "created": None})


@router.post("/secrets")
async def create_secret(request: Request, who: site.Viewer = site.VIEWER) -> Response:
    form = await site.form(request, who)
    principal = who.require(JOBS_SUBMIT)
    data = await _secret_value(form)
    mode = _text(form, "mode")
    try:
        body = SecretCreate(name=_text(form, "name"), kind=_text(form, "kind"),
                            data=base64.b64encode(data).decode(),
                            path=_text(form, "path") or None,
                            mode=int(mode, 8) if mode else None)
    except ValueError as e:  # ValidationError is one; int() of a bad mode is another
        if isinstance(e, ValidationError):
            raise _invalid(e) from None
        raise InvalidInput(f"mode {mode!r} is not an octal number like 600",
                           field="mode") from None
    secrets = farm_of(request).builds.secrets
    created = await secrets.create(principal, body)
    return site.render(request, "secrets.html", {
        "secrets": await secrets.all(principal), "created": created}, status=201,
        headers=_NO_STORE)


@router.post("/secrets/{uuid}/delete")
async def delete_secret(request: Request, uuid: str, who: site.Viewer = site.VIEWER
                        ) -> Response:
    await site.form(request, who)
    principal = who.require(JOBS_SUBMIT)
    await farm_of(request).builds.secrets.delete(principal, uuid)
    return site.redirect("/secrets")
