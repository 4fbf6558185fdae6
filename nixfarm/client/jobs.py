"""Client calls of the jobs API (used by the CLI), on top of ``client.api.Client``."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from nixfarm.client.api import Client
from nixfarm.errors import Unavailable
from nixfarm.retries import reconnects
from nixfarm.wire.jobs import (
    JobOut,
    JobPage,
    JobSubmit,
    ManifestCheck,
    ManifestChecked,
    SecretCreate,
    SecretKind,
    SecretOut,
)
from nixfarm.wire.releases import ReleaseRequest

log = logging.getLogger("nixfarm.client")


class JobsClient:
    def __init__(self, client: Client) -> None:
        self.connection = client.connection

    async def submit(self, body: JobSubmit) -> JobOut:
        return await self.connection.call("POST", "/api/v1/jobs", JobOut, body)

    async def release(self, body: ReleaseRequest) -> JobOut:
        """Queue a release build (``POST /api/v1/releases``): the job it made."""
        return await self.connection.call("POST", "/api/v1/releases", JobOut, body)

    async def check(self, manifest: str) -> ManifestChecked:
        """What a submit of ``manifest`` would say (InvalidInput: its refusal)."""
        return await self.connection.call("POST", "/api/v1/manifests/check", ManifestChecked,
                                          ManifestCheck(manifest=manifest))

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

    async def download(self, url: str, dest: Path) -> int:
        """Stream the file at ``url`` (an artifact's) into ``dest``; its size. Follows a
        redirect to object storage."""
        size = 0
        async with self.connection.stream("GET", url, follow_redirects=True) as response:
            with dest.open("wb") as out:
                async for chunk in response.aiter_bytes(1024 * 1024):
                    out.write(chunk)
                    size += len(chunk)
        return size

    async def follow(self, job_id: int) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """The job's Server-Sent Events until its end: (event, data).

        A connection that breaks is made again from the last event's id (``reconnects``),
        so a line is neither lost nor repeated.
        """
        timeout = httpx.Timeout(None, connect=10.0)
        path = f"/api/v1/jobs/{job_id}/events"
        last_id, heard = "", time.monotonic()
        policy = reconnects(f"following job {job_id}", log, lambda: time.monotonic() - heard)
        async for attempt in policy:
            with attempt:
                async with self.connection.events(path, last_id, timeout=timeout) as events:
                    async for event in events:
                        heard, last_id = time.monotonic(), event.id or last_id
                        if not event.data:
                            # The server's keep-alive comment (": ping", every 15 s of
                            # silence, as a VM boots), which httpx-sse hands on as an
                            # empty "message": nothing to decode.
                            continue
                        yield event.event, event.json()
                        if event.event == "end":
                            return
                raise Unavailable(f"the server ended job {job_id}'s events before its end",
                                  url=self.connection.url)

    async def create_secret(self, name: str, kind: SecretKind, data: bytes, path: str | None,
                            mode: int | None) -> SecretOut:
        body = SecretCreate(name=name, kind=kind, data=base64.b64encode(data).decode(),
                            path=path, mode=mode)
        return await self.connection.call("POST", "/api/v1/secrets", SecretOut, body)

    async def secrets(self) -> list[SecretOut]:
        return await self.connection.call("GET", "/api/v1/secrets", list[SecretOut])

    async def delete_secret(self, ident: str) -> SecretOut:
        return await self.connection.call("DELETE", f"/api/v1/secrets/{ident}", SecretOut)
