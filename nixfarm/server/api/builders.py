"""Ephemeral builders over the JSON API (see ``nixfarm.wire.builders``): admins see
and destroy builders and pools; a booting machine enrolls with its one-time token."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from nixfarm.builders.service import BuilderService
from nixfarm.config import POOL_NAME
from nixfarm.scopes import ADMIN
from nixfarm.server.auth import farm_of, require
from nixfarm.wire.base import Id
from nixfarm.wire.builders import (
    BuilderDetail,
    BuilderOut,
    DecisionOut,
    Enrollment,
    EnrollRequest,
    PoolOut,
)

router = APIRouter(prefix="/v1", tags=["builders"])

PoolName = Annotated[str | None, Query(pattern=f"^{POOL_NAME}$")]


def service(request: Request) -> BuilderService:
    return farm_of(request).builders


@router.get("/builders")
async def list_builders(request: Request, all: bool = False,
                        pool: PoolName = None) -> list[BuilderOut]:
    await require(request, ADMIN)
    return await service(request).list_builders(include_destroyed=all, pool=pool)


@router.get("/builders/decisions")
async def decisions(request: Request, pool: PoolName = None,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[DecisionOut]:
    await require(request, ADMIN)
    return await service(request).decisions(pool, limit)


@router.post("/builders/enroll", status_code=201)
async def enroll(request: Request, body: EnrollRequest) -> Enrollment:
    # No Authorization: the one-time token in the body is the credential.
    return await service(request).enroll(body.token)


@router.get("/builders/{builder_id}")
async def show_builder(request: Request, builder_id: Id) -> BuilderDetail:
    await require(request, ADMIN)
    return await service(request).show(builder_id)


@router.delete("/builders/{builder_id}")
async def destroy_builder(request: Request, builder_id: Id) -> BuilderOut:
    who = await require(request, ADMIN)
    builders = service(request)
    await builders.destroy(builder_id, f"destroyed by {who.name} through the API")
    return await builders.view(builder_id)


@router.get("/pools")
async def list_pools(request: Request) -> list[PoolOut]:
    await require(request, ADMIN)
    return await service(request).pools()
