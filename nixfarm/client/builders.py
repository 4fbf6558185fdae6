"""Client calls of the builders API (used by the CLI), on top of ``client.api.Client``."""

from __future__ import annotations

from nixfarm.client.api import Client
from nixfarm.wire.builders import BuilderDetail, BuilderOut, DecisionOut, PoolOut


class BuildersClient:
    def __init__(self, client: Client) -> None:
        self.connection = client.connection

    async def builders(self, include_destroyed: bool = False,
                       pool: str | None = None) -> list[BuilderOut]:
        params: dict[str, str] = {"all": "true" if include_destroyed else "false"}
        if pool is not None:
            params["pool"] = pool
        return await self.connection.call("GET", "/api/v1/builders", list[BuilderOut],
                                          params=params)

    async def builder(self, builder_id: int) -> BuilderDetail:
        return await self.connection.call("GET", f"/api/v1/builders/{builder_id}",
                                          BuilderDetail)

    async def destroy(self, builder_id: int) -> BuilderOut:
        return await self.connection.call("DELETE", f"/api/v1/builders/{builder_id}",
                                          BuilderOut)

    async def pools(self) -> list[PoolOut]:
        return await self.connection.call("GET", "/api/v1/pools", list[PoolOut])

    async def decisions(self, pool: str | None = None, limit: int = 100) -> list[DecisionOut]:
        params: dict[str, str | int] = {"limit": limit}
        if pool is not None:
            params["pool"] = pool
        return await self.connection.call("GET", "/api/v1/builders/decisions",
                                          list[DecisionOut], params=params)
