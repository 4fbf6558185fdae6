"""What every web page shares: who is looking, CSRF-checked forms, rendering, errors.

The API a page route uses::

    from nixfarm.server.pages import site

    router = APIRouter(include_in_schema=False)

    @router.get("/things")
    async def things(request: Request, who: site.Viewer = site.VIEWER) -> Response:
        ...  # who.principal: the same Principal the API would see (None: anonymous)
        return site.render(request, "things.html", {"things": ...})

    @router.post("/things/{name}/delete")
    async def delete(request: Request, name: str, who: site.Viewer = site.VIEWER) -> Response:
        form = await site.form(request, who)         # 403 page unless its CSRF token is right
        principal = who.require(ADMIN)              # 401 page (sign-in link) / 403 page
        ...
        return site.redirect("/things")             # 303: the browser GETs the next page

- ``Viewer`` (``site.VIEWER``, a FastAPI dependency): the principal of the session
  cookie, or of an ``Authorization`` header exactly as the API reads it (a bad bearer
  token is a 401). Services take ``who.principal``, so pages show what the API shows to
  the same token and nothing more. ``who.may(scope)`` decides whether to show a button;
  ``who.require(scope)`` guards the action.
- Forms: every POST form carries ``<input type="hidden" name="csrf" value="{{ csrf }}">``
  (``{{ csrf_field() }}`` writes it); ``site.form`` checks it against the session's own
  CSRF token, or for a visitor who has not signed in against the ``nixfarm_csrf``
  cookie (double submit). A request authenticated by an ``Authorization`` header needs
  none: a browser never adds that header by itself.
- ``render`` gives every template ``viewer``, ``csrf``, ``csrf_field()``, ``settings``
  and ``path``; templates extend ``base.html`` and fill ``title`` and ``body``.
- Errors raised in a page route (``NotFound``, ``Unauthorized``...) become pages in the
  site's look through ``ERRORS``, the page Mount's handlers (``server/app.py``): 401
  links to the sign-in page and comes back to where it was.
- Static files (``nixfarm/web/static``) are served under ``/static/``.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Depends
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from nixfarm.config import Settings
from nixfarm.durations import describe
from nixfarm.errors import Forbidden, Unauthorized
from nixfarm.scopes import allows
from nixfarm.server import auth, errors
from nixfarm.sessions import Session
from nixfarm.sizes import describe_size
from nixfarm.tokens import Principal

WEB = Path(__file__).parents[2] / "web"
templates = Jinja2Templates(directory=str(WEB / "templates"))

SESSION_COOKIE = "nixfarm_session"
CSRF_COOKIE = "nixfarm_csrf"
CSRF_FIELD = "csrf"


@dataclass(frozen=True)
class Viewer:
    """Who is looking at a page."""

    principal: Principal | None
    #: The session, when signed in with a cookie; None for a bearer token or anonymous.
    session: Session | None
    #: The CSRF token this viewer's forms carry ("" for a bearer token: none needed).
    csrf: str
    #: An anonymous visitor's CSRF cookie is new: ``render`` sets it.
    new_csrf_cookie: bool = False

    @property
    def signed_in(self) -> bool:
        return self.principal is not None

    @property
    def name(self) -> str | None:
        return self.principal.name if self.principal is not None else None

    @property
    def scopes(self) -> tuple[str, ...]:
        """Its principal's scopes; none when anonymous."""
        return self.principal.scopes if self.principal is not None else ()

    def may(self, scope: str) -> bool:
        return allows(self.scopes, scope)

    def require(self, scope: str) -> Principal:
        """The principal if it holds ``scope``: Unauthorized when anonymous (the 401 page
        offers to sign in), Forbidden when signed in without it."""
        if self.principal is None:
            raise Unauthorized(f"Sign in to do this (it needs scope {scope!r}).")
        if not allows(self.principal.scopes, scope):
            raise Forbidden(f"{self.principal.name!r} lacks scope {scope!r}.", scope=scope)
        return self.principal


async def viewer(request: Request) -> Viewer:
    """The page's viewer (resolved once per request; ``VIEWER`` is the dependency)."""
    known = getattr(request.state, "viewer", None)
    if isinstance(known, Viewer):
        return known
    if request.headers.get("authorization"):
        found = Viewer(await auth.principal(request), None, "")
    else:
        session = None
        secret = request.cookies.get(SESSION_COOKIE)
        if secret:
            session = await auth.farm_of(request).sessions.resolve(secret)
        if session is not None:
            found = Viewer(session.principal, session, session.csrf)
        else:
            cookie = request.cookies.get(CSRF_COOKIE, "")
            fresh = not (16 <= len(cookie) <= 100 and cookie.isascii())
            found = Viewer(None, None, secrets.token_urlsafe(32) if fresh else cookie, fresh)
    request.state.viewer = found
    return found


VIEWER: Any = Depends(viewer)


async def form(request: Request, who: Viewer) -> FormData:
    """The POSTed form, if it carries the viewer's CSRF token; else Forbidden."""
    data = await request.form()
    if who.principal is not None and who.session is None:
        return data  # an Authorization header: not something a browser sends by itself
    sent = data.get(CSRF_FIELD)
    if not isinstance(sent, str) or not who.csrf or not hmac.compare_digest(
            sent.encode(), who.csrf.encode()):
        raise Forbidden("This form's CSRF token is missing or stale: reload the page and "
                        "send it again.", scope="csrf")
    return data


def _settings(request: Request) -> Settings:
    settings = request.app.state.settings
    assert isinstance(settings, Settings)
    return settings


def secure_cookies(request: Request) -> bool:
    """Cookies are ``Secure`` when the farm is served over TLS (its base URL says)."""
    return _settings(request).base_url.startswith("https://")


def set_cookie(request: Request, response: Response, name: str, value: str,
               max_age: int | None = None) -> None:
    """A cookie of the site: HttpOnly, SameSite=Lax, Secure over TLS, for every path."""
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True,
                        samesite="lax", secure=secure_cookies(request))


def render(request: Request, template: str, context: dict[str, Any] | None = None,
           status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """``template`` with the site's context (see the module's notes)."""
    who = getattr(request.state, "viewer", None)
    if not isinstance(who, Viewer):
        who = Viewer(None, None, "")
    csrf = who.csrf

    def csrf_field() -> Markup:
        return Markup('<input type="hidden" name="{}" value="{}">').format(CSRF_FIELD, csrf)

    response = templates.TemplateResponse(request, template, {
        "viewer": who, "csrf": csrf, "csrf_field": csrf_field,
        "settings": _settings(request), "path": request.url.path,
        "path_qs": local_target(str(request.url.path) + (
            "?" + request.url.query if request.url.query else "")),
        **(context or {})}, status_code=status, headers=headers)
    if who.new_csrf_cookie:
        set_cookie(request, response, CSRF_COOKIE, csrf)
    # No page may be framed by another site (its buttons clicked through a disguise).
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Content-Security-Policy", "frame-ancestors 'none'")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


def redirect(target: str) -> Response:
    """After a form: 303, so the browser GETs ``target``."""
    return RedirectResponse(local_target(target), 303)


def local_target(target: str | None, default: str = "/") -> str:
    """``target`` if it is a path on this site, else ``default``: a ``next=`` parameter
    must never send a person to another site after signing in."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")) \
            or any(c in target for c in "\r\n\\"):
        return default
    return target


def sign_in_url(next_path: str) -> str:
    return "/sign-in?next=" + quote(local_target(next_path), safe="/")


def _error_page(request: Request, status: int, message: str) -> Response:
    titles = {400: "Bad request", 401: "Sign in needed", 403: "Not allowed",
              404: "Not found", 409: "Conflict"}
    return render(request, "error.html", {
        "status": status, "title": titles.get(status, "Error" if status < 500
                                              else "Something went wrong"),
        "message": message, "sign_in": sign_in_url(str(request.url.path))}, status=status)


#: The page Mount's exception handlers: errors as pages in the site's look.
ERRORS = errors.page_handlers(_error_page)


def static_routes() -> list[BaseRoute]:
    return [Mount("/static", app=StaticFiles(directory=WEB / "static"), name="static")]


# --- little things templates use ---------------------------------------------------


def duration(start: datetime | None, end: datetime | None) -> str:
    """``1h 2min``, ``3min 4s``, ``5s``; "" without a start; until now while it runs."""
    if start is None:
        return ""
    return describe((end or datetime.now(UTC)) - start, parts=2)


def when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment is not None else ""


templates.env.filters.update(duration=duration, when=when, size=describe_size)
