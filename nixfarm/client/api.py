"""A small typed client of the JSON API; finds the server and the token like the CLI.

Resolution order (DESIGN.md): ``--url``/``NIXFARM_URL`` and ``--token``/
``NIXFARM_TOKEN``; else, with ``--data-dir``/``NIXFARM_DATA_DIR``, the embedded
farm's ``server.json`` (its URL) and ``admin.token``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx

from nixfarm.client.connection import Connection, decode
from nixfarm.errors import InvalidInput
from nixfarm.wire.caches import (
    CacheCreate,
    CacheOut,
    GcReport,
    GcRequest,
    MissingRequest,
    MissingResponse,
    PathInfo,
)
from nixfarm.wire.tokens import TokenCreate, TokenOut, TokenPool


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


class Client:
    """The JSON API's calls for caches and tokens (``client.jobs`` adds the jobs')."""

    def __init__(self, endpoint: Endpoint, timeout: float | None = 60.0) -> None:
        self.endpoint = endpoint
        self.connection = Connection(endpoint.url, endpoint.token, timeout)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.connection.close()

    async def create_cache(self, name: str, private: bool, priority: int | None) -> CacheOut:
        return await self.connection.call("POST", "/api/v1/caches", CacheOut, CacheCreate(
            name=name, private=private, priority=priority))

    async def caches(self) -> list[CacheOut]:
        return await self.connection.call("GET", "/api/v1/caches", list[CacheOut])

    async def cache(self, name: str) -> CacheOut:
        return await self.connection.call("GET", f"/api/v1/caches/{name}", CacheOut)

    async def missing(self, cache: str, paths: list[str]) -> list[str]:
        answer = await self.connection.call("POST", f"/api/v1/caches/{cache}/missing",
                                            MissingResponse, MissingRequest(paths=paths))
        return answer.missing

    async def collect_garbage(self, cache: str, older_than_days: float,
                              dry_run: bool = False) -> GcReport:
        # A large cache takes a while to collect: no read timeout.
        return await self.connection.call(
            "POST", f"/api/v1/caches/{cache}/gc", GcReport,
            GcRequest(older_than_days=older_than_days, dry_run=dry_run),
            timeout=httpx.Timeout(None, connect=10.0))

    async def upload_path(self, cache: str, info: PathInfo, body: AsyncIterable[bytes],
                          stall: float | None = None) -> None:
        """PUT a path's NAR (idempotent). ``stall``: seconds the transfer may make no
        progress (the server neither reads nor answers) before it fails ``Unavailable``;
        None: no limit."""
        basename = info.store_path.rsplit("/", 1)[-1]
        await self.connection.send(
            "PUT", f"/api/v1/caches/{cache}/paths/{basename}", content=body,
            headers={"X-Nixfarm-Path-Info": info.model_dump_json(),
                     "Content-Type": "application/x-nix-nar"},
            timeout=httpx.Timeout(stall, connect=10.0))

    async def create_token(self, name: str, scopes: list[str],
                           expires_at: datetime | None = None,
                           runner_images: list[str] | None = None,
                           runner_owners: list[str] | None = None,
                           trusted: bool = True) -> TokenOut:
        return await self.connection.call("POST", "/api/v1/tokens", TokenOut, TokenCreate(
            name=name, scopes=scopes, expires_at=expires_at, runner_images=runner_images,
            runner_owners=runner_owners, trusted=trusted))

    async def update_token_pool(self, token_id: int, pool: TokenPool) -> TokenOut:
        """PATCH a runner token's pool: the fields set in ``pool`` (None for a list:
        any), the others left as they are."""
        return decode(await self.connection.send(
            "PATCH", f"/api/v1/tokens/{token_id}",
            content=pool.model_dump_json(exclude_unset=True),
            headers={"Content-Type": "application/json"}), TokenOut)

    async def tokens(self) -> list[TokenOut]:
        return await self.connection.call("GET", "/api/v1/tokens", list[TokenOut])

    async def revoke_token(self, token_id: int) -> TokenOut:
        return await self.connection.call("DELETE", f"/api/v1/tokens/{token_id}", TokenOut)
