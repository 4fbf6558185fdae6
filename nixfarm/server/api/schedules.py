"""Scheduled jobs over the JSON API (``builds.schedules``): create, list, delete. Each
needs ``jobs:submit``; a caller sees and deletes their own schedules (an admin: all)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from nixfarm.builds.schedules import ScheduleService
from nixfarm.scopes import JOBS_SUBMIT
from nixfarm.server.auth import farm_of, require
from nixfarm.wire.base import Id
from nixfarm.wire.schedules import ScheduleCreate, ScheduleOut

router = APIRouter(prefix="/v1/schedules", tags=["schedules"])


def service(request: Request) -> ScheduleService:
    return farm_of(request).builds.schedules


@router.post("", status_code=201)
async def create_schedule(request: Request, body: ScheduleCreate) -> ScheduleOut:
    """Submit the manifest as a job at each slot of ``cron`` (UTC). The manifest is
    checked now, as a submit would."""
    return await service(request).create(await require(request, JOBS_SUBMIT), body)


@router.get("")
async def list_schedules(request: Request) -> list[ScheduleOut]:
    return await service(request).all(await require(request, JOBS_SUBMIT))


@router.delete("/{schedule_id}")
async def delete_schedule(request: Request, schedule_id: Id) -> ScheduleOut:
    return await service(request).delete(await require(request, JOBS_SUBMIT), schedule_id)
