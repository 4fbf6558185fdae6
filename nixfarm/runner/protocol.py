"""The runner's side of the runner protocol (see ``nixfarm.wire.runners``): HTTP calls only.

A runner never touches the database or the event bus: everything goes through these
calls, with a token that has the ``runner`` scope.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
from pydantic import BaseModel

from nixfarm.client.api import raise_for
from nixfarm.errors import Conflict, NixfarmError
from nixfarm.wire.runners import (
    Assignment,
    ClaimRequest,
    FinishRequest,
    HeartbeatRequest,
    HeartbeatResponse,
    LogAccepted,
    RunnerOut,
    RunnerRegister,
    TaskReport,
)

M = TypeVar("M", bound=BaseModel)


class LeaseLost(Conflict):
    """The server gave the job to no one else's care but ours no longer (HTTP 409)."""


class RunnerClient:
    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(90.0, connect=10.0))
        self.runner_id = 0

    async def close(self) -> None:
        await self.http.aclose()

    async def _call(self, method: str, path: str, model: type[M] | None,
                    body: BaseModel | None = None, **kwargs: Any) -> M | None:
        try:
            response = await self.http.request(
                method, path, content=body.model_dump_json() if body else kwargs.pop("content",
                                                                                   None),
                headers={"Content-Type": "application/json"} if body else None, **kwargs)
        except httpx.TransportError as e:
            raise NixfarmError(f"cannot reach the server at {self.url}: {e}") from None
        if response.status_code == 409:
            raise LeaseLost(response.text)
        raise_for(response)
        if model is None or response.status_code == 204:
            return None
        return model.model_validate_json(response.content)

    def _job(self, job_id: int) -> str:
        return f"/api/v1/runners/{self.runner_id}/jobs/{job_id}"

    async def register(self, body: RunnerRegister) -> RunnerOut:
        out = await self._call("POST", "/api/v1/runners", RunnerOut, body)
        assert out is not None
        self.runner_id = out.id
        return out

    async def claim(self, wait: float) -> Assignment | None:
        return await self._call("POST", f"/api/v1/runners/{self.runner_id}/claim", Assignment,
                                ClaimRequest(wait=wait))

    async def heartbeat(self, job_id: int, wait: float) -> HeartbeatResponse:
        out = await self._call("POST", f"{self._job(job_id)}/heartbeat", HeartbeatResponse,
                               HeartbeatRequest(wait=wait))
        assert out is not None
        return out

    async def log(self, job_id: int, task: str | None, seq: int, data: bytes) -> None:
        where = f"/tasks/{task}/log" if task else "/log"
        await self._call("POST", f"{self._job(job_id)}{where}", LogAccepted,
                         content=data, params={"seq": seq})

    async def task(self, job_id: int, name: str, report: TaskReport) -> None:
        await self._call("POST", f"{self._job(job_id)}/tasks/{name}", None, report)

    async def artifact(self, job_id: int, path: str, file: Path) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            async with await anyio.open_file(file, "rb") as f:
                while data := await f.read(1 << 20):
                    yield data

        await self._call("PUT", f"{self._job(job_id)}/artifacts/{file.name}", None,
                         content=chunks(), params={"path": path},
                         timeout=httpx.Timeout(None, connect=10.0))

    async def finish(self, job_id: int, body: FinishRequest) -> None:
        await self._call("POST", f"{self._job(job_id)}/finish", None, body)
