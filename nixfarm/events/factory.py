"""Choosing the event bus: Redis when ``redis_url`` is set, else in-process."""

from __future__ import annotations

from nixfarm.config import Settings
from nixfarm.events.base import EventBus
from nixfarm.events.memory import MemoryBus


def open_bus(settings: Settings) -> EventBus:
    if settings.redis_url:
        from nixfarm.events.redis import RedisBus

        return RedisBus(settings.redis_url)
    return MemoryBus()
