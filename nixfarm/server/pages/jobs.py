"""Job pages: the farm at a glance, the job list, job groups, and a job with its logs.

Every page reads through the job service with the viewer's principal (``site``), so it
shows what the API shows the same token. A job page draws its logs' tails
(``logview``) and, while the job runs, follows it live through ``/jobs/ID/events``
(SSE from where the drawn logs end; ``static/log.js``), resuming after a dropped
connection from the last event's id. Cancel, re-run and re-run with an edited manifest
are CSRF-checked forms for whoever may change the job.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, get_args
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from nixfarm.errors import InvalidInput
from nixfarm.scopes import ADMIN, JOBS_SUBMIT
from nixfarm.server.api.jobs import artifact_response, event_stream, log_response
from nixfarm.server.auth import farm_of
from nixfarm.server.pages import logview, site
from nixfarm.server.pages.runners import liveness
from nixfarm.wire.base import Id
from nixfarm.wire.jobs import FINAL_STATUSES, JobOut, JobStatus

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 50
STATUSES: tuple[str, ...] = get_args(JobStatus)


@router.get("/")
async def home(request: Request, who: site.Viewer = site.VIEWER) -> Response:
    farm = farm_of(request)
    overview = await farm.builds.jobs.overview(who.principal)
    runners = await farm.builds.runners.runners() if who.may(ADMIN) else None
    busy: dict[str, int] = {}
    for job in overview.running:
        if job.runner:
            busy[job.runner] = busy.get(job.runner, 0) + 1
    now = datetime.now(UTC)
    states = {r.id: liveness(r, busy.get(r.name, 0), now) for r in runners or []}
    builders = await farm.builders.list_builders() if who.may(ADMIN) else []
    return site.render(request, "home.html", {
        "overview": overview, "runners": runners, "runner_states": states, "busy": busy,
        "builders": builders})


def _blank(value: str | None) -> str | None:
    return value.strip() or None if value is not None else None


def _day(value: str | None, field: str) -> date | None:
    value = _blank(value)
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{field} {value!r} is not a date (YYYY-MM-DD)", field=field) from None


@router.get("/jobs")
async def jobs_page(request: Request, status: str | None = None, tag: str | None = None,
                    owner: str | None = None, image: str | None = None,
                    since: str | None = None, until: str | None = None,
                    before: Id | None = None, who: site.Viewer = site.VIEWER) -> Response:
    # A filter form sends its empty fields as empty strings: they filter nothing.
    status, tag, owner, image = map(_blank, (status, tag, owner, image))
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"status {status!r} is not one of {', '.join(STATUSES)}",
                           field="status")
    first, last = _day(since, "since"), _day(until, "until")
    page = await farm_of(request).builds.jobs.search(
        who.principal, status=status, tag=tag, owner=owner, image=image, before=before,
        limit=PAGE_SIZE,
        since=datetime.combine(first, time(), UTC) if first else None,
        until=datetime.combine(last + timedelta(days=1), time(), UTC) if last else None)
    filters = {"status": status, "tag": tag, "owner": owner, "image": image,
               "since": first.isoformat() if first else None,
               "until": last.isoformat() if last else None}
    query = {k: v for k, v in filters.items() if v}
    older = (f"/jobs?{urlencode({**query, 'before': page.next_before})}"
             if page.next_before else None)
    return site.render(request, "jobs.html", {
        "page": page, "filters": filters, "statuses": STATUSES, "older": older,
        "newest": f"/jobs?{urlencode(query)}" if before else None})


@router.get("/job-groups/{group_id}")
async def group_page(request: Request, group_id: Id, who: site.Viewer = site.VIEWER
                     ) -> Response:
    group = await farm_of(request).builds.jobs.group(who.principal, group_id)
    return site.render(request, "job-group.html", {"group": group})


def job_path(job: JobOut) -> str:
    """A job's page, with its key when it is unlisted."""
    return f"/jobs/{job.id}" + (f"?{urlencode({'key': job.key})}" if job.key else "")


@router.get("/jobs/{job_id}")
async def job_page(request: Request, job_id: Id, key: str | None = None,
                   full: str | None = None, who: site.Viewer = site.VIEWER) -> Response:
    farm = farm_of(request)
    job, manifest, may_change = await farm.builds.jobs.with_manifest(who.principal, job_id, key)
    finished = job.status in FINAL_STATUSES
    logs = [await logview.view(farm.builds.logs, job.id, name,
                               full=full == logview.anchor_of(name))
            for name in [None, *(t.name for t in job.tasks)]]
    # A job still running is followed from where each drawn log's last whole line ends.
    resume = ",".join(str(log.size - (0 if finished else log.open_bytes)) for log in logs)
    events = None
    if not finished:
        events = f"/jobs/{job.id}/events?" + urlencode(
            {"from": resume, **({"key": job.key} if job.key else {})})
    return site.render(request, "job.html", {
        "job": job, "logs": logs, "finished": finished, "events": events,
        "manifest": manifest, "may_change": who.may(JOBS_SUBMIT) and may_change,
        "key_query": f"?{urlencode({'key': job.key})}" if job.key else ""})


@router.get("/jobs/{job_id}/events")
async def job_events(request: Request, job_id: Id, key: str | None = None,
                     resume_from: Annotated[str | None, Query(alias="from")] = None,
                     who: site.Viewer = site.VIEWER) -> Response:
    """The job's events for its page (SSE): ``from`` is where the drawn logs end."""
    return await event_stream(request, who.principal, job_id, None, False, key, resume_from)


@router.get("/jobs/{job_id}/log.txt")
async def setup_log(request: Request, job_id: Id, key: str | None = None,
                    who: site.Viewer = site.VIEWER) -> Response:
    return await log_response(request, who.principal, job_id, None, key)


@router.get("/jobs/{job_id}/tasks/{task}/log.txt")
async def task_log(request: Request, job_id: Id, task: str, key: str | None = None,
                   who: site.Viewer = site.VIEWER) -> Response:
    return await log_response(request, who.principal, job_id, task, key)


@router.get("/jobs/{job_id}/artifacts/{name}")
async def artifact(request: Request, job_id: Id, name: str, key: str | None = None,
                   who: site.Viewer = site.VIEWER) -> Response:
    return await artifact_response(request, who.principal, job_id, name, key)


@router.post("/jobs/{job_id}/cancel")
async def cancel(request: Request, job_id: Id, who: site.Viewer = site.VIEWER) -> Response:
    await site.form(request, who)
    job = await farm_of(request).builds.jobs.cancel(who.require(JOBS_SUBMIT), job_id)
    return site.redirect(job_path(job))


@router.post("/jobs/{job_id}/rerun")
async def rerun(request: Request, job_id: Id, who: site.Viewer = site.VIEWER) -> Response:
    await site.form(request, who)
    job = await farm_of(request).builds.jobs.rerun(who.require(JOBS_SUBMIT), job_id)
    return site.redirect(job_path(job))


@router.get("/jobs/{job_id}/edit")
async def edit_page(request: Request, job_id: Id, who: site.Viewer = site.VIEWER) -> Response:
    job, manifest, _ = await farm_of(request).builds.jobs.with_manifest(who.principal, job_id)
    who.require(JOBS_SUBMIT)
    return site.render(request, "job-edit.html", {
        "job": job, "manifest": manifest, "problem": None})


@router.post("/jobs/{job_id}/edit")
async def edit(request: Request, job_id: Id, who: site.Viewer = site.VIEWER) -> Response:
    form = await site.form(request, who)
    jobs = farm_of(request).builds.jobs
    manifest = str(form.get("manifest", ""))
    principal = who.require(JOBS_SUBMIT)
    try:
        job = await jobs.rerun(principal, job_id, manifest)
    except InvalidInput as error:  # the manifest's problems, shown beside it to fix
        original = await jobs.get(who.principal, job_id)
        return site.render(request, "job-edit.html", {
            "job": original, "manifest": manifest, "problem": error.message}, status=400)
    return site.redirect(job_path(job))
