"""A small typed client of the JSON API; finds the server and the token like the CLI.

Resolution order (DESIGN.md): ``--url``/``NIXFARM_URL`` and ``--token``/
``NIXFARM_TOKEN``; else, with ``--data-dir``/``NIXFARM_DATA_DIR``, the embedded
farm's ``server.json`` (its URL) and ``admin.token``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter

from nixfarm.errors import (
    Conflict,
    Forbidden,
    IntegrityError,
    InvalidInput,
    NixfarmError,
    NotFound,
    Unauthorized,
)
from nixfarm.wire.caches import (
    CacheCreate,
    CacheOut,
    GcReport,
    GcRequest,
    MissingRequest,
    MissingResponse,
    PathInfo,
)
from nixfarm.wire.tokens import TokenCreate, TokenOut

T = TypeVar("T")


@dataclass(frozen=True)
class Endpoint:
    url: str
    token: str | None


def resolve(url: str | None, token: str | None, data_dir: str | None) -> Endpoint:
    """Where the server is and which token to use; InvalidInput if it can't be told."""
    if data_dir and (not url or not token):
        root = Path(data_dir)
        if not url:
            try:
                url = json.loads((root / "server.json").read_text())["url"]
            except (OSError, ValueError, KeyError):
                raise InvalidInput(f"{root} holds no running farm (no server.json); start one "
                                   "with `nixfarm up` or pass --url", field="data_dir") from None
        if not token:
            try:
                token = (root / "admin.token").read_text().strip()
            except OSError:
                token = None
    if not url:
        raise InvalidInput("no server given: pass --url, set NIXFARM_URL, or pass --data-dir "
                           "of an embedded farm", field="url")
    return Endpoint(url.rstrip("/"), token)


_ERRORS: dict[str, type[NixfarmError]] = {
    "IntegrityError": IntegrityError,
    "InvalidInput": InvalidInput,
    "ManifestError": InvalidInput,
    "NotFound": NotFound,
    "Unauthorized": Unauthorized,
    "Forbidden": Forbidden,
    "Conflict": Conflict,
}


def raise_for(response: httpx.Response) -> None:
    """Turn an error answer back into the error the server raised."""
    if response.is_success:
        return
    try:
        error = response.json()["error"]
        kind, message = str(error["type"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        kind, message = "", response.text.strip() or response.reason_phrase
    cls = _ERRORS.get(kind)
    if cls is None:
        cls = {400: InvalidInput, 401: Unauthorized, 403: Forbidden, 404: NotFound,
               409: Conflict}.get(response.status_code, NixfarmError)
    raise cls(f"the server refused: {message} (HTTP {response.status_code})")


class Client:
    def __init__(self, endpoint: Endpoint, timeout: float | None = 60.0) -> None:
        headers = {"Authorization": f"Bearer {endpoint.token}"} if endpoint.token else {}
        self.endpoint = endpoint
        self.http = httpx.AsyncClient(base_url=endpoint.url, headers=headers,
                                      timeout=httpx.Timeout(timeout, connect=10.0))

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def _call(self, method: str, path: str, model: Any, body: BaseModel | None = None,
                    **kwargs: Any) -> Any:
        try:
            response = await self.http.request(
                method, path,
                content=body.model_dump_json(exclude_none=True) if body else None,
                headers={"Content-Type": "application/json"} if body else None, **kwargs)
        except httpx.TransportError as e:
            raise NixfarmError(f"cannot reach the server at {self.endpoint.url}: {e}") from None
        raise_for(response)
        return TypeAdapter(model).validate_python(response.json())

    async def create_cache(self, name: str, private: bool, priority: int | None) -> CacheOut:
        result: CacheOut = await self._call(
            "POST", "/api/v1/caches", CacheOut,
            CacheCreate(name=name, private=private, priority=priority))
        return result

    async def caches(self) -> list[CacheOut]:
        result: list[CacheOut] = await self._call("GET", "/api/v1/caches", list[CacheOut])
        return result

    async def cache(self, name: str) -> CacheOut:
        result: CacheOut = await self._call("GET", f"/api/v1/caches/{name}", CacheOut)
        return result

    async def missing(self, cache: str, paths: list[str]) -> list[str]:
        result: MissingResponse = await self._call(
            "POST", f"/api/v1/caches/{cache}/missing", MissingResponse,
            MissingRequest(paths=paths))
        return result.missing

    async def collect_garbage(self, cache: str, older_than_days: float,
                              dry_run: bool = False) -> GcReport:
        # A large cache takes a while to collect: no read timeout.
        result: GcReport = await self._call(
            "POST", f"/api/v1/caches/{cache}/gc", GcReport,
            GcRequest(older_than_days=older_than_days, dry_run=dry_run),
            timeout=httpx.Timeout(None, connect=10.0))
        return result

    async def upload_path(self, cache: str, info: PathInfo, body: AsyncIterable[bytes]) -> None:
        basename = info.store_path.rsplit("/", 1)[-1]
        try:
            response = await self.http.put(
                f"/api/v1/caches/{cache}/paths/{basename}", content=body,
                headers={"X-Nixfarm-Path-Info": info.model_dump_json(),
                         "Content-Type": "application/x-nix-nar"},
                timeout=httpx.Timeout(None, connect=10.0))
        except httpx.TransportError as e:
            raise NixfarmError(f"uploading {basename} failed: {e}") from None
        raise_for(response)

    async def create_token(self, name: str, scopes: list[str]) -> TokenOut:
        result: TokenOut = await self._call("POST", "/api/v1/tokens", TokenOut,
                                            TokenCreate(name=name, scopes=scopes))
        return result

    async def tokens(self) -> list[TokenOut]:
        result: list[TokenOut] = await self._call("GET", "/api/v1/tokens", list[TokenOut])
        return result

    async def revoke_token(self, token_id: int) -> TokenOut:
        result: TokenOut = await self._call("DELETE", f"/api/v1/tokens/{token_id}", TokenOut)
        return result
