"""Job pages: the list, and a job with its tasks and its logs following live (SSE)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.templating import Jinja2Templates
from starlette.responses import Response

from nixfarm.server.auth import farm_of, principal
from nixfarm.wire.base import Id

templates = Jinja2Templates(directory=str(Path(__file__).parents[2] / "web" / "templates"))
router = APIRouter(include_in_schema=False)


@router.get("/jobs")
async def jobs_page(request: Request, before: Id | None = None) -> Response:
    page = await farm_of(request).builds.jobs.search(await principal(request), before=before)
    return templates.TemplateResponse(request, "jobs.html", {"page": page})


@router.get("/jobs/{job_id}")
async def job_page(request: Request, job_id: Id, key: str | None = None) -> Response:
    job = await farm_of(request).builds.jobs.get(await principal(request), job_id, key)
    return templates.TemplateResponse(request, "job.html", {"job": job})
