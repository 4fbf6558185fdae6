"""Client calls of the jobs API (used by the CLI), on top of ``client.api.Client``."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from nixfarm.client.api import Client, raise_for
from nixfarm.errors import NixfarmError
from nixfarm.wire.jobs import JobOut, JobPage, JobSubmit, SecretCreate, SecretKind, SecretOut


class JobsClient:
    def __init__(self, client: Client) -> None:
        self.client = client

    async def _json(self, method: str, path: str, model: Any, body: Any = None,
                    **kwargs: Any) -> Any:
        return await self.client._call(method, path, model, body, **kwargs)

    async def submit(self, body: JobSubmit) -> JobOut:
        result: JobOut = await self._json("POST", "/api/v1/jobs", JobOut, body)
        return result

    async def get(self, job_id: int) -> JobOut:
        result: JobOut = await self._json("GET", f"/api/v1/jobs/{job_id}", JobOut)
        return result

    async def page(self, status: str | None, mine: bool, limit: int) -> JobPage:
        params: dict[str, Any] = {"limit": limit, "mine": mine}
        if status:
            params["status"] = status
        result: JobPage = await self._json("GET", "/api/v1/jobs", JobPage, params=params)
        return result

    async def cancel(self, job_id: int) -> JobOut:
        result: JobOut = await self._json("POST", f"/api/v1/jobs/{job_id}/cancel", JobOut)
        return result

    async def log(self, url: str) -> AsyncIterator[bytes]:
        try:
            async with self.client.http.stream("GET", url) as response:
                if not response.is_success:
                    await response.aread()
                    raise_for(response)
                async for chunk in response.aiter_bytes():
                    yield chunk
        except httpx.TransportError as e:
            raise NixfarmError(f"reading the log failed: {e}") from None

    async def follow(self, job_id: int) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """The job's Server-Sent Events until its end: (event, data)."""
        timeout = httpx.Timeout(None, connect=10.0)
        try:
            async with self.client.http.stream(
                    "GET", f"/api/v1/jobs/{job_id}/events", timeout=timeout) as response:
                if not response.is_success:
                    await response.aread()
                    raise_for(response)
                kind = ""
                async for line in response.aiter_lines():
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: "):
                        yield kind, json.loads(line[6:])
        except httpx.TransportError as e:
            raise NixfarmError(f"following job {job_id} failed: {e}") from None

    async def create_secret(self, name: str, kind: SecretKind, data: bytes, path: str | None,
                            mode: int | None) -> SecretOut:
        body = SecretCreate(name=name, kind=kind, data=base64.b64encode(data).decode(),
                            path=path, mode=mode)
        result: SecretOut = await self._json("POST", "/api/v1/secrets", SecretOut, body)
        return result

    async def secrets(self) -> list[SecretOut]:
        result: list[SecretOut] = await self._json("GET", "/api/v1/secrets", list[SecretOut])
        return result

    async def delete_secret(self, ident: str) -> SecretOut:
        result: SecretOut = await self._json("DELETE", f"/api/v1/secrets/{ident}", SecretOut)
        return result
