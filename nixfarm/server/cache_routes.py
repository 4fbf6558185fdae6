"""The Nix binary cache protocol under ``/cache/<name>/``, reading and writing.

What ``nix copy --to http://HOST/cache/NAME`` does (Nix 2.8): GET nix-cache-info,
GET ``<hash>.narinfo`` (404: not there yet), HEAD then PUT ``nar/<filehash>.nar.xz``,
then PUT the narinfo. PUT answers carry ``Content-Length: 0``: without it Nix waits
five seconds per upload for a body that never comes.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from nixfarm.cache.service import CacheService, CacheView
from nixfarm.errors import InvalidInput, NotFound
from nixfarm.metrics import Metrics
from nixfarm.server.auth import farm_of, readable_cache, writable_cache
from nixfarm.server.body import read_bounded
from nixfarm.server.downloads import send
from nixfarm.storage.base import Download

_NARINFO_TYPE = "text/x-nix-narinfo"
_MAX_NARINFO = 1 << 20


def _ok() -> Response:
    return Response(b"", 200)


async def _cache_for(request: Request, write: bool) -> CacheView:
    # A private cache the caller may not read answers 404 like a missing one, for
    # reads and writes alike: its existence is not revealed (see server/auth.py).
    name = request.path_params["name"]
    if not write:
        return await readable_cache(request, name)
    return await writable_cache(request, name)


async def _read_small(request: Request, limit: int) -> bytes:
    return await read_bounded(request, limit, f"the request body is larger than {limit} bytes")


async def cache_info(request: Request) -> Response:
    cache = await _cache_for(request, write=request.method == "PUT")
    if request.method == "PUT":
        return _ok()  # our nix-cache-info is derived from the cache's settings
    text = farm_of(request).caches.cache_info(cache)
    return PlainTextResponse(text, media_type="text/x-nix-cache-info")


async def narinfo(request: Request) -> Response:
    name = request.path_params["name"]
    store_hash = request.path_params["hash"]
    farm = farm_of(request)
    metrics: Metrics = request.app.state.metrics
    if request.method == "PUT":
        await _cache_for(request, write=True)
        text = await _read_small(request, _MAX_NARINFO)
        try:
            decoded = text.decode()
        except UnicodeDecodeError:
            raise InvalidInput("the narinfo is not UTF-8 text", field="body") from None
        await farm.caches.receive_narinfo(name, store_hash, decoded)
        return _ok()
    await _cache_for(request, write=False)
    body = await farm.caches.narinfo(name, store_hash)
    if body is None:
        metrics.cache_lookups.labels(name, "miss").inc()
        raise NotFound(f"cache {name!r} has no store path with hash {store_hash}",
                       kind="path", name=store_hash)
    metrics.cache_lookups.labels(name, "hit").inc()
    if request.method == "HEAD":
        return Response(None, 200, media_type=_NARINFO_TYPE,
                        headers={"Content-Length": str(len(body))})
    return Response(body, 200, media_type=_NARINFO_TYPE)


def _stored_file(param: str, media_type: str,
                 receive: Callable[[CacheService, str, str, AsyncIterable[bytes]], Awaitable[None]],
                 fetch: Callable[[CacheService, str, str], Awaitable[Download]],
                 ) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint for a file of the cache (a NAR, a log): PUT streams it in, GET out."""

    async def endpoint(request: Request) -> Response:
        name = request.path_params["name"]
        caches = farm_of(request).caches
        if request.method == "PUT":
            await _cache_for(request, write=True)
            await receive(caches, name, request.path_params[param], request.stream())
            return _ok()
        await _cache_for(request, write=False)
        found = await fetch(caches, name, request.path_params[param])
        return await send(request, found, media_type)

    return endpoint


nar = _stored_file("file", "application/x-nix-nar", CacheService.receive_nar_file,
                   CacheService.nar)
build_log = _stored_file("drv", "text/plain; charset=utf-8", CacheService.receive_log,
                         CacheService.log)


async def listing(request: Request) -> Response:
    if request.method == "PUT":
        # Nix uploads listings with write-nar-listing=true; ours are computed on ingest.
        await _cache_for(request, write=True)
        async for _ in request.stream():  # read and dropped: memory stays flat
            pass
        return _ok()
    await _cache_for(request, write=False)
    found = await farm_of(request).caches.listing(request.path_params["name"],
                                                  request.path_params["hash"])
    return await send(request, found, "application/json")


async def unknown(request: Request) -> Response:
    await _cache_for(request, write=request.method == "PUT")
    raise NotFound(f"{request.path_params['rest']!r} is not part of the Nix cache protocol",
                   kind="file", name=request.path_params["rest"])


_READ_WRITE = ["GET", "HEAD", "PUT"]

#: Relative to ``/cache`` (the Nix cache protocol's mount).
routes: list[BaseRoute] = [
    Route("/{name}/nix-cache-info", cache_info, methods=_READ_WRITE),
    Route("/{name}/{hash}.narinfo", narinfo, methods=_READ_WRITE),
    Route("/{name}/{hash}.ls", listing, methods=_READ_WRITE),
    Route("/{name}/nar/{file}", nar, methods=_READ_WRITE),
    Route("/{name}/log/{drv}", build_log, methods=_READ_WRITE),
    Route("/{name}/{rest:path}", unknown, methods=_READ_WRITE),
]
