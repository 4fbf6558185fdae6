"""Choosing the event bus: Redis when ``redis_url`` is set, else in-process."""

from __future__ import annotations

from nixfarm.config import Settings
from nixfarm.events.base import EventBus
from nixfarm.events.memory import MemoryBus


def open_bus(settings: Settings, *, workers: int = 0) -> EventBus:
    """``workers``: the server's processes (0: not known). In-process events reach the
    whole farm when it has one server process: ``nixfarm up``, or one ``nixfarm
    server`` on the data directory's SQLite database (which no other host can share)."""
    if settings.redis_url:
        from nixfarm.events.redis import RedisBus

        return RedisBus(settings.redis_url)
    return MemoryBus(complete=workers == 1 and not settings.database_url)
