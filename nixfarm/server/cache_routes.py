"""The Nix binary cache protocol under ``/cache/<name>/``, reading and writing.

What ``nix copy --to http://HOST/cache/NAME`` does (Nix 2.8): GET nix-cache-info,
GET ``<hash>.narinfo`` (404: not there yet), HEAD then PUT ``nar/<filehash>.nar.xz``,
then PUT the narinfo. PUT answers carry ``Content-Length: 0``: without it Nix waits
five seconds per upload for a body that never comes.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from nixfarm.cache.service import CacheService, CacheView, Download
from nixfarm.errors import InvalidInput, NotFound
from nixfarm.metrics import Metrics
from nixfarm.scopes import cache_scope
from nixfarm.server.auth import farm_of, readable_cache, require
from nixfarm.server.body import read_bounded
from nixfarm.server.edge import accel, edge_of

_NARINFO_TYPE = "text/x-nix-narinfo"
_MAX_NARINFO = 1 << 20


def _ok() -> Response:
    return Response(b"", 200)


async def _cache_for(request: Request, write: bool) -> CacheView:
    name = request.path_params["name"]
    if not write:
        return await readable_cache(request, name)
    cache = await farm_of(request).caches.get(name)
    await require(request, cache_scope(name, "push"))
    return cache


_IMMUTABLE = {"Cache-Control": "public, max-age=31536000, immutable"}


async def _download(request: Request, download: Download, media_type: str) -> Response:
    handed = accel(request, download.key, download.local_path, media_type, _IMMUTABLE)
    if handed is not None:  # nginx sends it: HEAD, Range and sendfile included
        return handed
    if request.method == "HEAD":
        # Answered here even for S3: a presigned URL is signed for GET, and a HEAD
        # following the redirect would fail, so `nix copy` would upload again.
        return Response(None, 200, media_type=media_type,
                        headers={"Content-Length": str(download.size)})
    if download.url is not None:
        return RedirectResponse(download.url, 307)
    if download.local_path is not None:
        # FileResponse answers Range itself, and under Granian hands the file to the
        # server (pathsend) instead of reading it through Python.
        return FileResponse(download.local_path, media_type=media_type, headers=_IMMUTABLE)
    # Opened before the status line: a file gone from the store is a 404, not a 200
    # with a broken body.
    chunks = await farm_of(request).store.get(download.key)
    return StreamingResponse(chunks, media_type=media_type,
                             headers={"Content-Length": str(download.size)})


async def _read_small(request: Request, limit: int) -> bytes:
    return await read_bounded(request, limit, f"the request body is larger than {limit} bytes")


async def cache_info(request: Request) -> Response:
    cache = await _cache_for(request, write=request.method == "PUT")
    if request.method == "PUT":
        return _ok()  # our nix-cache-info is derived from the cache's settings
    text = farm_of(request).caches.cache_info(cache)
    _publish(request, cache, "nix-cache-info", text.encode())
    return PlainTextResponse(text, media_type="text/x-nix-cache-info")


def _publish(request: Request, cache: CacheView, name: str, data: bytes) -> None:
    """Let nginx give a public cache's answer from now on (a cache never changes its
    visibility, and what is published is what any client would get)."""
    edge = edge_of(request)
    if edge is not None and not cache.private:
        edge.publish(f"cache/{cache.name}/{name}", data)


def _link(request: Request, cache: CacheView, name: str, found: Download) -> None:
    """Like ``_publish`` for a stored file: a hard link, so nginx sends it from now on."""
    edge = edge_of(request)
    if edge is not None and not cache.private and found.local_path is not None:
        edge.link(f"cache/{cache.name}/{name}", found.local_path)


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
    cache = await _cache_for(request, write=False)
    body = await farm.caches.narinfo(name, store_hash)
    if body is None:
        metrics.cache_lookups.labels(name, "miss").inc()
        raise NotFound(f"cache {name!r} has no store path with hash {store_hash}",
                       kind="path", name=store_hash)
    metrics.cache_lookups.labels(name, "hit").inc()
    _publish(request, cache, f"{store_hash}.narinfo", body)
    if request.method == "HEAD":
        return Response(None, 200, media_type=_NARINFO_TYPE,
                        headers={"Content-Length": str(len(body))})
    return Response(body, 200, media_type=_NARINFO_TYPE)


def _stored_file(param: str, media_type: str,
                 receive: Callable[[CacheService, str, str, AsyncIterable[bytes]], Awaitable[None]],
                 fetch: Callable[[CacheService, str, str], Awaitable[Download]],
                 published_under: str | None = None,
                 ) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint for a file of the cache (a NAR, a log): PUT streams it in, GET out;
    with ``published_under`` (a directory of the cache's URL), a public cache's file is
    also linked there for nginx."""

    async def endpoint(request: Request) -> Response:
        name = request.path_params["name"]
        caches = farm_of(request).caches
        if request.method == "PUT":
            await _cache_for(request, write=True)
            await receive(caches, name, request.path_params[param], request.stream())
            return _ok()
        cache = await _cache_for(request, write=False)
        found = await fetch(caches, name, request.path_params[param])
        if published_under is not None:
            _link(request, cache, f"{published_under}/{request.path_params[param]}", found)
        return await _download(request, found, media_type)

    return endpoint


nar = _stored_file("file", "application/x-nix-nar", CacheService.receive_nar_file,
                   CacheService.nar, published_under="nar")
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
    return await _download(request, found, "application/json")


async def unknown(request: Request) -> Response:
    await _cache_for(request, write=request.method == "PUT")
    raise NotFound(f"{request.path_params['rest']!r} is not part of the Nix cache protocol",
                   kind="file", name=request.path_params["rest"])


_READ_WRITE = ["GET", "HEAD", "PUT"]

routes = [
    Route("/cache/{name}/nix-cache-info", cache_info, methods=_READ_WRITE),
    Route("/cache/{name}/{hash}.narinfo", narinfo, methods=_READ_WRITE),
    Route("/cache/{name}/{hash}.ls", listing, methods=_READ_WRITE),
    Route("/cache/{name}/nar/{file}", nar, methods=_READ_WRITE),
    Route("/cache/{name}/log/{drv}", build_log, methods=_READ_WRITE),
    Route("/cache/{name}/{rest:path}", unknown, methods=_READ_WRITE),
]
