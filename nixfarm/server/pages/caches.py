"""Cache pages: the list, a cache (its key, the lines to paste, size, search), a store
path, and the cache's garbage collection settings.

Who sees what is the API's rule (``server/auth.readable_cache``): a private cache is
listed and shown only to a principal with its pull scope, and is otherwise a 404
exactly like a cache that does not exist. Changing the retention period and collecting
garbage now are an admin's (as ``POST /api/v1/caches/NAME/gc`` is), through forms that
carry the session's CSRF token.
"""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Request
from starlette.responses import Response

from nixfarm.cache import gc
from nixfarm.cache.browsing import CacheBrowser, parse_retention
from nixfarm.cache.service import CacheView
from nixfarm.errors import InvalidInput, NotFound
from nixfarm.scopes import ADMIN
from nixfarm.server.auth import farm_of, unknown_cache
from nixfarm.server.pages import site

router = APIRouter(include_in_schema=False)

PER_PAGE = 50


def _netloc(base_url: str) -> str:
    """The host (and port) of the farm's URL: what a netrc ``machine`` line names."""
    return base_url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]


async def readable_cache(request: Request, name: str, who: site.Viewer) -> CacheView:
    """The cache if the viewer may read it; a private one the viewer may not read is the
    same 404 as a missing one (``server/auth.readable_cache``, for a page's viewer)."""
    try:
        view = await farm_of(request).caches.get(name)
    except NotFound:
        raise unknown_cache(name) from None
    if not view.readable_with(who.scopes):
        raise unknown_cache(name)
    return view


@router.get("/caches")
async def caches_page(request: Request, who: site.Viewer = site.VIEWER) -> Response:
    farm = farm_of(request)
    visible = [c for c in await farm.caches.all() if c.readable_with(who.scopes)]
    summaries = await CacheBrowser(farm.caches).summaries(visible)
    return site.render(request, "caches.html", {"caches": summaries,
                                                "base_url": farm.settings.base_url})


@router.get("/caches/{name}")
async def cache_page(request: Request, name: str, q: str = "", page: int = 1,
                     who: site.Viewer = site.VIEWER) -> Response:
    farm = farm_of(request)
    view = await readable_cache(request, name, who)
    browser = CacheBrowser(farm.caches)
    summary = await browser.summary(view)
    if page < 1:
        raise InvalidInput("page must be 1 or more", field="page")
    paths, more = await browser.search(view, q, page=page, per_page=PER_PAGE)
    base = farm.settings.base_url
    url = f"{base}/cache/{view.name}"
    return site.render(request, "cache.html", {
        "cache": summary, "url": url, "q": q, "page": page, "paths": paths, "more": more,
        "nix_conf": f"extra-substituters = {url}\nextra-trusted-public-keys = "
                    f"{view.public_key}",
        "netrc": f"machine {_netloc(base)} password <a token with cache:{view.name}:pull>",
        "may_admin": who.may(ADMIN)})


@router.get("/caches/{name}/paths/{store_hash}")
async def path_page(request: Request, name: str, store_hash: str,
                    who: site.Viewer = site.VIEWER) -> Response:
    view = await readable_cache(request, name, who)
    detail = await CacheBrowser(farm_of(request).caches).path(view, store_hash)
    return site.render(request, "cache-path.html", {"cache": view, "detail": detail})


@router.post("/caches/{name}/retention")
async def set_retention(request: Request, name: str,
                        who: site.Viewer = site.VIEWER) -> Response:
    form = await site.form(request, who)
    view = await readable_cache(request, name, who)
    who.require(ADMIN)
    text = form.get("retention_days", "")
    days = parse_retention(text if isinstance(text, str) else "")
    await CacheBrowser(farm_of(request).caches).set_retention(view, days)
    return site.redirect(f"/caches/{view.name}#gc")


@router.post("/caches/{name}/gc")
async def collect_now(request: Request, name: str, who: site.Viewer = site.VIEWER) -> Response:
    form = await site.form(request, who)
    view = await readable_cache(request, name, who)
    who.require(ADMIN)
    text = form.get("older_than_days", "")
    days = parse_retention(text if isinstance(text, str) else "")
    if days is None:
        raise InvalidInput("say how old (in days) an upload must be to be collected",
                           field="older_than_days")
    report = await gc.collect(farm_of(request).caches, view.name, timedelta(days=days),
                              dry_run=form.get("dry_run") == "1")
    return site.render(request, "cache-gc.html", {"cache": view, "report": report})
