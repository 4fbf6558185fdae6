"""CI jobs over the JSON API: submit, list, inspect, start, cancel, groups; logs as
plain text with Range, and followed live as Server-Sent Events.

Reading a job needs no token when it is public, or an unlisted job's key (``?key=``,
in the URLs the API gives out); a private one, its owner's token or an admin's (see
``builds.jobs``). Changing one needs its owner's token or an admin's.

SSE streams send ``event: log|task|job|ping|end`` with a JSON ``data:`` line each (see
``JobService.follow``) and close after ``end``. Each event's ``id:`` is how far the
stream is in its logs, in bytes (``builds.logs.Positions``): a follower that
reconnects with it as ``Last-Event-ID`` gets only what comes after.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import datetime

from fastapi import APIRouter, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.responses import Response, StreamingResponse

from nixfarm.builds.logs import Positions
from nixfarm.builds.services import BuildServices
from nixfarm.errors import InvalidInput
from nixfarm.scopes import JOBS_SUBMIT
from nixfarm.server.auth import farm_of, principal, require
from nixfarm.tokens import Principal
from nixfarm.wire.base import Id
from nixfarm.wire.jobs import (
    JobGroupCreate,
    JobGroupOut,
    JobOut,
    JobPage,
    JobRerun,
    JobStatus,
    JobSubmit,
    ManifestCheck,
    ManifestChecked,
    WebhookKey,
)

router = APIRouter(prefix="/v1", tags=["jobs"])
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def builds(request: Request) -> BuildServices:
    return farm_of(request).builds


@router.post("/jobs", status_code=201)
async def submit(request: Request, body: JobSubmit) -> JobOut:
    who = await require(request, JOBS_SUBMIT)
    return await builds(request).jobs.submit(who, body)


@router.post("/manifests/check")
async def check_manifest(request: Request, body: ManifestCheck) -> ManifestChecked:
    """What a submit of this manifest would say, without submitting it: 400 with the same
    problems, or the image, task names and warnings."""
    who = await require(request, JOBS_SUBMIT)
    manifest = await builds(request).jobs.check(who, body.manifest)
    return ManifestChecked(image=manifest.image, tasks=[t.name for t in manifest.tasks],
                           warnings=[str(w) for w in manifest.warnings])


@router.get("/jobs")
async def list_jobs(
    request: Request,
    status: JobStatus | None = None,
    tag: str | None = None,
    mine: bool = False,
    limit: int = Query(50, ge=1, le=200),
    before: Id | None = None,
    owner: str | None = Query(None, max_length=100, description="The owner's token name."),
    image: str | None = Query(None, max_length=200),
    since: datetime | None = Query(None, description="Submitted at or after (UTC)."),
    until: datetime | None = Query(None, description="Submitted before (UTC)."),
) -> JobPage:
    return await builds(request).jobs.search(await principal(request), status=status, tag=tag,
                                             mine=mine, limit=limit, before=before,
                                             owner=owner, image=image, since=since,
                                             until=until)


#: An unlisted job's key, as its URLs carry it.
Key = Query(None, max_length=64, description="An unlisted job's key.")


@router.get("/jobs/{job_id}")
async def get_job(request: Request, job_id: Id, key: str | None = Key) -> JobOut:
    return await builds(request).jobs.get(await principal(request), job_id, key)


@router.get("/jobs/{job_id}/manifest")
async def get_manifest(request: Request, job_id: Id, key: str | None = Key) -> Response:
    text = await builds(request).jobs.manifest(await principal(request), job_id, key)
    return Response(text, media_type="text/yaml; charset=utf-8")


@router.post("/jobs/{job_id}/start")
async def start(request: Request, job_id: Id) -> JobOut:
    return await builds(request).jobs.start(await require(request, JOBS_SUBMIT), job_id)


@router.post("/jobs/{job_id}/rerun", status_code=201)
async def rerun(request: Request, job_id: Id, body: JobRerun | None = None) -> JobOut:
    """A new job like this one (tags, note, visibility), of its manifest or an edited one."""
    return await builds(request).jobs.rerun(await require(request, JOBS_SUBMIT), job_id,
                                            body.manifest if body is not None else None)


@router.post("/jobs/{job_id}/cancel")
async def cancel(request: Request, job_id: Id) -> JobOut:
    return await builds(request).jobs.cancel(await require(request, JOBS_SUBMIT), job_id)


async def _log(request: Request, job_id: Id, task: str | None, key: str | None) -> Response:
    return await log_response(request, await principal(request), job_id, task, key)


async def log_response(request: Request, who: Principal | None, job_id: int,
                       task: str | None, key: str | None) -> Response:
    """A job's log as text/plain, Range supported, if ``who`` may read the job (the
    API's and the web pages' raw logs)."""
    services = builds(request)
    view = await services.jobs.get(who, job_id, key)
    if task is not None and task not in {t.name for t in view.tasks}:
        raise InvalidInput(f"job {job_id} has no task {task!r}", field="task")
    start, end, partial = 0, None, False
    header = request.headers.get("range")
    if header:
        match = _RANGE.fullmatch(header.strip())
        if match is None or match.groups() == ("", ""):
            raise InvalidInput(f"unsupported Range {header!r}; use bytes=START-[END]",
                               field="range")
        first, last = match.groups()
        partial = True
        if first:
            start, end = int(first), int(last) + 1 if last else None
        else:  # the last N bytes
            where = await services.logs.locate(job_id, task, 0, None)
            start = max(where.total - int(last), 0)
    where = await services.logs.locate(job_id, task, start, end)
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "no-cache"}
    if partial:
        if where.start >= where.total and where.total > 0:
            return Response(status_code=416, headers={"Content-Range": f"bytes */{where.total}"})
        if where.end > where.start:
            headers["Content-Range"] = f"bytes {where.start}-{where.end - 1}/{where.total}"
    headers["Content-Length"] = str(where.end - where.start)
    return StreamingResponse(services.logs.stream(where), status_code=206 if partial and
                             where.end > where.start else 200,
                             media_type="text/plain; charset=utf-8", headers=headers)


@router.get("/jobs/{job_id}/log", response_class=Response)
async def setup_log(request: Request, job_id: Id, key: str | None = Key) -> Response:
    """The setup log (everything before the first task), text/plain; Range supported."""
    return await _log(request, job_id, None, key)


@router.get("/jobs/{job_id}/tasks/{task}/log", response_class=Response)
async def task_log(request: Request, job_id: Id, task: str, key: str | None = Key
                   ) -> Response:
    """A task's log, text/plain; Range supported."""
    return await _log(request, job_id, task, key)


async def _sse(request: Request, job_id: Id, task: str | None, only: bool,
               key: str | None) -> Response:
    return await event_stream(request, await principal(request), job_id, task, only, key)


async def event_stream(request: Request, who: Principal | None, job_id: int,
                       task: str | None, only: bool, key: str | None,
                       resume: str | None = None) -> Response:
    """A job's events as SSE for ``who``, from ``Last-Event-ID`` when the request has
    one (a reconnect), else from ``resume`` (a position in the same form: what a page
    already shows), else from the start."""
    services = builds(request)
    positions = Positions(request.headers.get("last-event-id") or resume)
    events = services.jobs.follow(who, job_id, task, only, positions=positions, key=key)
    first = await anext(events)  # NotFound and friends before the 200 goes out

    async def body() -> AsyncIterator[ServerSentEvent]:
        # Each event is sent before the next is read: ``positions`` is still its own.
        try:
            kind, data = first
            yield ServerSentEvent(json.dumps(data), event=kind, id=str(positions))
            async for kind, data in events:
                yield ServerSentEvent(json.dumps(data), event=kind, id=str(positions))
        finally:
            await events.aclose()

    return EventSourceResponse(body(), headers={"Cache-Control": "no-cache"}, sep="\n")


@router.get("/jobs/{job_id}/events", response_class=Response)
async def job_events(request: Request, job_id: Id, key: str | None = Key) -> Response:
    """Every log, task and status change of the job, live (text/event-stream)."""
    return await _sse(request, job_id, None, False, key)


@router.get("/jobs/{job_id}/log/events", response_class=Response)
async def setup_log_events(request: Request, job_id: Id, key: str | None = Key) -> Response:
    return await _sse(request, job_id, None, True, key)


@router.get("/jobs/{job_id}/tasks/{task}/log/events", response_class=Response)
async def task_log_events(request: Request, job_id: Id, task: str,
                          key: str | None = Key) -> Response:
    return await _sse(request, job_id, task, True, key)


@router.get("/jobs/{job_id}/artifacts/{name}", response_class=Response)
async def artifact(request: Request, job_id: Id, name: str, key: str | None = Key
                   ) -> Response:
    return await artifact_response(request, await principal(request), job_id, name, key)


async def artifact_response(request: Request, who: Principal | None, job_id: int, name: str,
                            key: str | None) -> Response:
    """An artifact's bytes, if ``who`` may read its job."""
    services = builds(request)
    await services.jobs.get(who, job_id, key)
    info, stream = await services.artifacts.open(job_id, name)
    return StreamingResponse(stream, media_type="application/octet-stream", headers={
        "Content-Length": str(info.size),
        "Content-Disposition": f"attachment; filename*=UTF-8''{_quote(name)}"})


def _quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


@router.post("/job-groups", status_code=201)
async def create_group(request: Request, body: JobGroupCreate) -> JobGroupOut:
    return await builds(request).jobs.create_group(await require(request, JOBS_SUBMIT), body)


@router.get("/job-groups/{group_id}")
async def get_group(request: Request, group_id: Id) -> JobGroupOut:
    return await builds(request).jobs.group(await principal(request), group_id)


@router.post("/job-groups/{group_id}/start")
async def start_group(request: Request, group_id: Id) -> JobGroupOut:
    return await builds(request).jobs.start_group(await require(request, JOBS_SUBMIT), group_id)


@router.post("/job-groups/{group_id}/cancel")
async def cancel_group(request: Request, group_id: Id) -> JobGroupOut:
    return await builds(request).jobs.cancel_group(await require(request, JOBS_SUBMIT),
                                                   group_id)


@router.get("/webhook-key")
async def webhook_key(request: Request) -> WebhookKey:
    """The key your jobs' webhooks are signed with (see ``wire.jobs.WebhookKey``)."""
    who = await require(request, JOBS_SUBMIT)
    return WebhookKey(key=builds(request).secrets.webhook_key(who.token_id).hex())
