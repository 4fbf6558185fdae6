"""The runner protocol (see ``nixfarm.wire.runners`` for the sequence): every route needs
a token with the ``runner`` scope, and one that registered the runner in the path."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import anyio
from fastapi import APIRouter, Query, Request
from starlette.responses import Response, StreamingResponse

from nixfarm.builds.runners import RunnerService
from nixfarm.scopes import ADMIN, RUNNER
from nixfarm.server.auth import farm_of, require
from nixfarm.server.body import read_bounded
from nixfarm.wire.base import MAX_INT, Id
from nixfarm.wire.jobs import ArtifactOut, JobOut
from nixfarm.wire.runners import (
    MAX_LOG_CHUNK,
    Assignment,
    ClaimRequest,
    FinishRequest,
    HeartbeatRequest,
    HeartbeatResponse,
    ImageBuildsOut,
    ImageBuildsRequest,
    LogAccepted,
    RunnerOut,
    RunnerRegister,
    TaskReport,
)

router = APIRouter(prefix="/v1/runners", tags=["runners"])


def service(request: Request) -> RunnerService:
    return farm_of(request).builds.runners


@router.post("", status_code=201)
async def register(request: Request, body: RunnerRegister) -> RunnerOut:
    return await service(request).register(await require(request, RUNNER), body)


@router.get("")
async def list_runners(request: Request) -> list[RunnerOut]:
    await require(request, ADMIN)
    return await service(request).runners()


async def _watch_hang_up(request: Request, gone: anyio.Event) -> None:
    # The body is read: from here the server only tells of the client hanging up
    # (granian first repeats an empty http.request).
    while (await request.receive())["type"] != "http.disconnect":
        pass
    gone.set()


@contextlib.asynccontextmanager
async def _hang_up_watched(request: Request) -> AsyncIterator[Callable[[], bool]]:
    """For a long-poll: whether its client has hung up (then it must take nothing)."""
    gone = anyio.Event()
    # A plain task, not a task group: an error of the call (another runner's id) must
    # reach the error handlers as itself, not wrapped in an ExceptionGroup.
    watcher = asyncio.create_task(_watch_hang_up(request, gone))
    try:
        yield gone.is_set
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


@router.post("/{runner_id}/claim", response_model=Assignment,
             responses={204: {"description": "Nothing to do within `wait` seconds."}})
async def claim(request: Request, runner_id: Id, body: ClaimRequest) -> Response | Assignment:
    who = await require(request, RUNNER)
    async with _hang_up_watched(request) as gone:
        assignment = await service(request).claim(who, runner_id, body.wait, gone)
    if assignment is None:
        return Response(status_code=204)
    return assignment


@router.post("/{runner_id}/jobs/{job_id}/heartbeat")
async def heartbeat(request: Request, runner_id: Id, job_id: Id,
                    body: HeartbeatRequest) -> HeartbeatResponse:
    who = await require(request, RUNNER)
    return await service(request).heartbeat(who, runner_id, job_id, body.wait)


async def _chunk(request: Request) -> bytes:
    return await read_bounded(request, MAX_LOG_CHUNK,
                              f"a log chunk is at most {MAX_LOG_CHUNK} bytes")


@router.post("/{runner_id}/jobs/{job_id}/log")
async def setup_log(request: Request, runner_id: Id, job_id: Id,
                    seq: int = Query(ge=0, le=MAX_INT)) -> LogAccepted:
    """Append chunk ``seq`` (raw bytes) to the setup log."""
    who = await require(request, RUNNER)
    return await service(request).log(who, runner_id, job_id, None, seq,
                                        await _chunk(request))


@router.post("/{runner_id}/jobs/{job_id}/tasks/{task}/log")
async def task_log(request: Request, runner_id: Id, job_id: Id, task: str,
                   seq: int = Query(ge=0, le=MAX_INT)) -> LogAccepted:
    """Append chunk ``seq`` (raw bytes) to a task's log."""
    who = await require(request, RUNNER)
    return await service(request).log(who, runner_id, job_id, task, seq,
                                        await _chunk(request))


@router.post("/{runner_id}/jobs/{job_id}/tasks/{task}", status_code=204)
async def report_task(request: Request, runner_id: Id, job_id: Id, task: str,
                      body: TaskReport) -> Response:
    who = await require(request, RUNNER)
    await service(request).report_task(who, runner_id, job_id, task, body)
    return Response(status_code=204)


@router.put("/{runner_id}/jobs/{job_id}/artifacts/{name}", status_code=201)
async def upload_artifact(request: Request, runner_id: Id, job_id: Id, name: str,
                          path: str = Query(min_length=1)) -> ArtifactOut:
    who = await require(request, RUNNER)
    return await service(request).artifact(who, runner_id, job_id, name, path,
                                             request.stream())


@router.post("/{runner_id}/jobs/{job_id}/finish")
async def finish(request: Request, runner_id: Id, job_id: Id, body: FinishRequest) -> JobOut:
    who = await require(request, RUNNER)
    return await service(request).finish(who, runner_id, job_id, body)


@router.post("/{runner_id}/image-builds")
async def image_builds(request: Request, runner_id: Id,
                       body: ImageBuildsRequest) -> ImageBuildsOut:
    """New builds of the images this runner offers (a long-poll, see the wire model)."""
    who = await require(request, RUNNER)
    async with _hang_up_watched(request) as gone:
        found = await service(request).image_builds(who, runner_id, body.after, body.wait,
                                                    gone)
    return ImageBuildsOut(builds=found)


@router.get("/{runner_id}/image-builds/{job_id}/{name}", response_class=Response)
async def image_build_artifact(request: Request, runner_id: Id, job_id: Id,
                               name: str) -> Response:
    """An image build's artifact (``root.img.qcow2``, ``recipe.sha256``)."""
    who = await require(request, RUNNER)
    info, stream = await service(request).image_artifact(who, runner_id, job_id, name)
    return StreamingResponse(stream, media_type="application/octet-stream",
                             headers={"Content-Length": str(info.size)})
