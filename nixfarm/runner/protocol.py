"""The runner's side of the runner protocol (see ``nixfarm.wire.runners``): HTTP calls only.

A runner never touches the database or the event bus: everything goes through these
calls, with a token that has the ``runner`` scope, over the clients' one
:class:`~nixfarm.client.connection.Connection`. A 409 on a call about a job the runner
holds means the server took the job back: ``LeaseLost``. Anywhere else a 409 is the
plain ``Conflict`` it is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
from pydantic import BaseModel

from nixfarm.client.connection import Connection, decode, websocket_url
from nixfarm.errors import Conflict
from nixfarm.wire.runners import (
    Assignment,
    ClaimRequest,
    FinishRequest,
    HeartbeatRequest,
    HeartbeatResponse,
    ImageBuildOut,
    ImageBuildsOut,
    ImageBuildsRequest,
    LogAccepted,
    RunnerOut,
    RunnerRegister,
    TaskReport,
)


class LeaseLost(Conflict):
    """The server gave the job to no one else's care but ours no longer (HTTP 409)."""


class RunnerClient:
    def __init__(self, url: str, token: str) -> None:
        self.connection = Connection(url, token, timeout=90.0)
        self.url = self.connection.url
        self.token = token
        self.runner_id = 0

    async def close(self) -> None:
        await self.connection.close()

    def _job(self, job_id: int) -> str:
        return f"/api/v1/runners/{self.runner_id}/jobs/{job_id}"

    async def _on_job(self, job_id: int, method: str, path: str, body: BaseModel | None = None,
                      **kwargs: Any) -> httpx.Response:
        """A call about a job this runner holds: a 409 is ``LeaseLost``."""
        try:
            return await self.connection.send(method, self._job(job_id) + path, body, **kwargs)
        except Conflict as e:
            raise LeaseLost(e.message) from None

    async def register(self, body: RunnerRegister) -> RunnerOut:
        out = await self.connection.call("POST", "/api/v1/runners", RunnerOut, body)
        self.runner_id = out.id
        return out

    async def claim(self, wait: float) -> Assignment | None:
        response = await self.connection.send(
            "POST", f"/api/v1/runners/{self.runner_id}/claim", ClaimRequest(wait=wait))
        return None if response.status_code == 204 else decode(response, Assignment)

    async def heartbeat(self, job_id: int, wait: float) -> HeartbeatResponse:
        response = await self._on_job(job_id, "POST", "/heartbeat", HeartbeatRequest(wait=wait))
        return decode(response, HeartbeatResponse)

    async def log(self, job_id: int, task: str | None, seq: int, data: bytes) -> LogAccepted:
        where = f"/tasks/{task}/log" if task else "/log"
        response = await self._on_job(job_id, "POST", where, content=data, params={"seq": seq})
        return decode(response, LogAccepted)

    async def task(self, job_id: int, name: str, report: TaskReport) -> None:
        await self._on_job(job_id, "POST", f"/tasks/{name}", report)

    async def artifact(self, job_id: int, path: str, file: Path) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            async with await anyio.open_file(file, "rb") as f:
                while data := await f.read(1 << 20):
                    yield data

        await self._on_job(job_id, "PUT", f"/artifacts/{file.name}", content=chunks(),
                           params={"path": path}, timeout=httpx.Timeout(None, connect=10.0))

    async def finish(self, job_id: int, body: FinishRequest) -> None:
        await self._on_job(job_id, "POST", "/finish", body)

    async def release(self, job_id: int) -> None:
        """The held sandbox of an ended job is gone (``builds.shells``)."""
        await self._on_job(job_id, "POST", "/release")

    async def image_builds(self, after: int, wait: float) -> list[ImageBuildOut]:
        """New builds of the images this runner offers (a long-poll of ``wait`` s)."""
        out = await self.connection.call(
            "POST", f"/api/v1/runners/{self.runner_id}/image-builds", ImageBuildsOut,
            ImageBuildsRequest(after=after, wait=wait))
        return out.builds

    async def download(self, url: str, dest: Path) -> int:
        """Stream an image build's artifact (its ``url``) into ``dest``; its size. Asked
        of this runner's own server whatever host ``url`` names (the farm's public
        ``base_url`` may not be reachable from the runner, as the embedded one's)."""
        parts = urlsplit(url)
        path = parts.path[max(parts.path.find("/api/"), 0):]  # (below any prefix)
        path += f"?{parts.query}" if parts.query else ""
        size = 0
        async with self.connection.stream("GET", path, follow_redirects=True,
                                          timeout=httpx.Timeout(None, connect=10.0)) as response:
            with dest.open("wb") as out:
                async for chunk in response.aiter_bytes(1024 * 1024):
                    await anyio.to_thread.run_sync(out.write, chunk)
                    size += len(chunk)
        return size

    def shell_url(self, job_id: int, key: str) -> str:
        """The WebSocket URL of a shell session into a held job's sandbox."""
        return f"{websocket_url(self.url)}{self._job(job_id)}/shells/{key}"
