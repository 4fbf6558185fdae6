"""Job secrets over the JSON API: create, list (never values), delete."""

from __future__ import annotations

from fastapi import APIRouter, Request

from nixfarm.scopes import JOBS_SUBMIT
from nixfarm.server.auth import farm_of, require
from nixfarm.wire.jobs import SecretCreate, SecretOut

router = APIRouter(prefix="/v1/secrets", tags=["secrets"])


@router.post("", status_code=201)
async def create_secret(request: Request, body: SecretCreate) -> SecretOut:
    return await farm_of(request).builds.secrets.create(await require(request, JOBS_SUBMIT), body)


@router.get("")
async def list_secrets(request: Request) -> list[SecretOut]:
    return await farm_of(request).builds.secrets.all(await require(request, JOBS_SUBMIT))


@router.delete("/{ident}")
async def delete_secret(request: Request, ident: str) -> SecretOut:
    """Delete a secret by UUID or name."""
    return await farm_of(request).builds.secrets.delete(await require(request, JOBS_SUBMIT),
                                                        ident)
