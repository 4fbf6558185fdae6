"""Signing in and out of the web UI: with a token, or through OpenID Connect (``oidc``).

Signing in with a token checks it (live, not revoked) and opens a session holding it
(``nixfarm.sessions``); the browser keeps only the session's cookie, never the token.
Signing out deletes the session on the server and the cookie in the browser.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from nixfarm.errors import InvalidInput
from nixfarm.server.auth import farm_of
from nixfarm.server.pages import site

router = APIRouter(include_in_schema=False)


def open_session_response(request: Request, secret: str, target: str | None) -> Response:
    """The answer that hands a new session's cookie to the browser and moves on."""
    response = site.redirect(site.local_target(target))
    lifetime = int(farm_of(request).settings.web.session_hours * 3600)
    site.set_cookie(request, response, site.SESSION_COOKIE, secret, max_age=lifetime)
    return response


@router.get("/sign-in")
async def sign_in_page(request: Request, next: str = "/",
                       who: site.Viewer = site.VIEWER) -> Response:
    return site.render(request, "sign-in.html", {
        "next": site.local_target(next),
        "oidc": farm_of(request).settings.web.oidc.enabled})


@router.post("/sign-in")
async def sign_in(request: Request, who: site.Viewer = site.VIEWER) -> Response:
    form = await site.form(request, who)
    secret = str(form.get("token", "")).strip()
    target = site.local_target(str(form.get("next", "/")))
    farm = farm_of(request)
    found = await farm.tokens.authenticate(secret) if secret else None
    if found is None:
        problem = InvalidInput("That token is unknown, revoked or expired." if secret
                               else "Paste a token to sign in.", field="token")
        return site.render(request, "sign-in.html", {
            "next": target, "oidc": farm.settings.web.oidc.enabled,
            "problem": problem.message}, status=401)
    previous = request.cookies.get(site.SESSION_COOKIE)
    if previous:  # signing in again replaces a session, never leaves it behind
        await farm.sessions.close(previous)
    _, cookie = await farm.sessions.open(found.token_id, "token")
    return open_session_response(request, cookie, target)


@router.post("/sign-out")
async def sign_out(request: Request, who: site.Viewer = site.VIEWER) -> Response:
    await site.form(request, who)
    secret = request.cookies.get(site.SESSION_COOKIE)
    if secret:
        await farm_of(request).sessions.close(secret)
    response = site.redirect("/")
    response.delete_cookie(site.SESSION_COOKIE, path="/", httponly=True, samesite="lax",
                           secure=site.secure_cookies(request))
    return response
