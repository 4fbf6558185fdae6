"""Client calls of the jobs API (used by the CLI), on top of ``client.api.Client``."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from nixfarm.client.api import Client
from nixfarm.wire.jobs import JobOut, JobPage, JobSubmit, SecretCreate, SecretKind, SecretOut


class JobsClient:
    def __init__(self, client: Client) -> None:
        self.connection = client.connection

    async def submit(self, body: JobSubmit) -> JobOut:
        return await self.connection.call("POST", "/api/v1/jobs", JobOut, body)

    async def get(self, job_id: int) -> JobOut:
        return await self.connection.call("GET", f"/api/v1/jobs/{job_id}", JobOut)

    async def page(self, status: str | None, mine: bool, limit: int) -> JobPage:
        params: dict[str, Any] = {"limit": limit, "mine": mine}
        if status:
            params["status"] = status
        return await self.connection.call("GET", "/api/v1/jobs", JobPage, params=params)

    async def cancel(self, job_id: int) -> JobOut:
        return await self.connection.call("POST", f"/api/v1/jobs/{job_id}/cancel", JobOut)

    async def log(self, url: str) -> AsyncIterator[bytes]:
        async with self.connection.stream("GET", url) as response:
            async for chunk in response.aiter_bytes():
                yield chunk

    async def follow(self, job_id: int) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """The job's Server-Sent Events until its end: (event, data)."""
        timeout = httpx.Timeout(None, connect=10.0)
        async with self.connection.stream("GET", f"/api/v1/jobs/{job_id}/events",
                                          timeout=timeout) as response:
            kind = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    yield kind, json.loads(line[6:])

    async def create_secret(self, name: str, kind: SecretKind, data: bytes, path: str | None,
                            mode: int | None) -> SecretOut:
        body = SecretCreate(name=name, kind=kind, data=base64.b64encode(data).decode(),
                            path=path, mode=mode)
        return await self.connection.call("POST", "/api/v1/secrets", SecretOut, body)

    async def secrets(self) -> list[SecretOut]:
        return await self.connection.call("GET", "/api/v1/secrets", list[SecretOut])

    async def delete_secret(self, ident: str) -> SecretOut:
        return await self.connection.call("DELETE", f"/api/v1/secrets/{ident}", SecretOut)
