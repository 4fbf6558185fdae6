"""Client calls of the schedules API (used by the CLI)."""

from __future__ import annotations

from nixfarm.client.api import Client
from nixfarm.wire.schedules import ScheduleCreate, ScheduleOut


class SchedulesClient:
    def __init__(self, client: Client) -> None:
        self.connection = client.connection

    async def create(self, body: ScheduleCreate) -> ScheduleOut:
        return await self.connection.call("POST", "/api/v1/schedules", ScheduleOut, body)

    async def list(self) -> list[ScheduleOut]:
        return await self.connection.call("GET", "/api/v1/schedules", list[ScheduleOut])

    async def delete(self, schedule_id: int) -> ScheduleOut:
        return await self.connection.call("DELETE", f"/api/v1/schedules/{schedule_id}",
                                          ScheduleOut)
