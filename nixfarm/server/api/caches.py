"""Caches over the JSON API: create, list, inspect, collect garbage, and the push protocol
of nixfarm."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Request
from pydantic import ValidationError

from nixfarm.cache import gc
from nixfarm.cache.service import CacheView, PathUpload
from nixfarm.errors import InvalidInput
from nixfarm.scopes import ADMIN, cache_scope
from nixfarm.server.auth import farm_of, principal, readable_cache, require
from nixfarm.wire.caches import (
    CacheCreate,
    CacheOut,
    GcReport,
    GcRequest,
    MissingRequest,
    MissingResponse,
    PathInfo,
)
from nixfarm.wire.values import StorePathText

router = APIRouter(prefix="/v1/caches", tags=["caches"])


def _out(request: Request, cache: CacheView, paths: int | None = None) -> CacheOut:
    base = farm_of(request).settings.base_url
    return CacheOut(name=cache.name, private=cache.private, public_key=cache.public_key,
                    priority=cache.priority, url=f"{base}/cache/{cache.name}", paths=paths)


@router.post("", status_code=201)
async def create_cache(request: Request, body: CacheCreate) -> CacheOut:
    await require(request, ADMIN)
    cache = await farm_of(request).caches.create(body.name, body.private, body.priority)
    return _out(request, cache, 0)


@router.get("")
async def list_caches(request: Request) -> list[CacheOut]:
    who = await principal(request)
    scopes = who.scopes if who else ()
    return [_out(request, c) for c in await farm_of(request).caches.all()
            if c.readable_with(scopes)]


@router.get("/{name}")
async def get_cache(request: Request, name: str) -> CacheOut:
    cache = await readable_cache(request, name)
    return _out(request, cache, (await farm_of(request).caches.stats(name))["paths"])


@router.post("/{name}/missing")
async def missing(request: Request, name: str, body: MissingRequest) -> MissingResponse:
    await require(request, cache_scope(name, "push"))
    return MissingResponse(missing=await farm_of(request).caches.missing(name, body.paths))


@router.put("/{name}/paths/{basename}", status_code=201)
async def upload_path(request: Request, name: str, basename: StorePathText) -> dict[str, str]:
    """Upload one store path: its compressed NAR as the body, its metadata as a header."""
    await require(request, cache_scope(name, "push"))
    header = request.headers.get("x-nixfarm-path-info")
    if header is None:
        raise InvalidInput("the X-Nixfarm-Path-Info header is missing", field="path_info")
    try:
        info = PathInfo.model_validate_json(header)
    except ValidationError as e:
        raise InvalidInput(f"X-Nixfarm-Path-Info: {e.errors()[0]['msg']}",
                           field="path_info") from None
    if not info.store_path.endswith("/" + basename):
        raise InvalidInput(f"path info for {info.store_path} uploaded as {basename}",
                           field="store_path")
    upload = PathUpload(info.store_path, info.nar_hash, info.nar_size, info.references,
                        info.deriver, info.ca)
    await farm_of(request).caches.receive_path(name, upload, info.compression, request.stream())
    return {"store_path": info.store_path}


@router.post("/{name}/gc")
async def collect_garbage(request: Request, name: str) -> GcReport:
    """Remove what was uploaded before a cutoff, keeping the closures of what stays."""
    await require(request, ADMIN)
    # The body is parsed here rather than by FastAPI so that an anonymous caller is
    # told 401 before anything about the body, and bad input is the app's 400 naming
    # its field.
    try:
        body = GcRequest.model_validate_json(await request.body() or b"{}")
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "body"
        raise InvalidInput(f"{field}: {first['msg']}", field=field) from None
    farm = farm_of(request)
    return await gc.collect(farm.caches, name, timedelta(days=body.older_than_days),
                            dry_run=body.dry_run)
