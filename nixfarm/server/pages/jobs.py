"""Job pages: the list, and a job with its tasks and its logs following live (SSE)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from nixfarm.server.auth import farm_of
from nixfarm.server.pages import site
from nixfarm.wire.base import Id

router = APIRouter(include_in_schema=False)


@router.get("/jobs")
async def jobs_page(request: Request, before: Id | None = None,
                    who: site.Viewer = site.VIEWER) -> Response:
    page = await farm_of(request).builds.jobs.search(who.principal, before=before)
    return site.render(request, "jobs.html", {"page": page})


@router.get("/jobs/{job_id}")
async def job_page(request: Request, job_id: Id, key: str | None = None,
                   who: site.Viewer = site.VIEWER) -> Response:
    job = await farm_of(request).builds.jobs.get(who.principal, job_id, key)
    return site.render(request, "job.html", {"job": job})
