"""The event bus contract: fire-and-forget messages on named topics.

Used for what must be fast but may be lost: waking a runner's long-poll when a job is
queued, telling a heartbeat that its job was cancelled, and fanning log chunks out to
followers. Nothing depends on a message arriving: the database stays the truth, and
every consumer can fall back to reading it (a follower replays stored log chunks, a
long-poll re-checks the queue on a timer). That is why at-most-once delivery, which
both Redis pub/sub and an in-process queue give, is enough.

Two implementations, chosen in ``nixfarm.farm``: ``memory.MemoryBus`` (one process)
and ``redis.RedisBus`` (several servers sharing a Redis).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol


class Subscription(Protocol):
    """Messages on one topic, in publication order, from the moment of subscribing."""

    def __aiter__(self) -> AsyncIterator[bytes]:
        """Iterate messages forever; wrap in a timeout (``anyio.move_on_after``) to stop."""

    async def get(self, seconds: float) -> bytes | None:
        """The next message, or None if none came within ``seconds``."""


class EventBus(Protocol):
    #: Whether every publisher of the farm publishes here: Redis, which every server
    #: shares; the in-process bus of a farm's only server process. Where not, what
    #: another server publishes is seen only by reading the database (soon).
    complete: bool

    async def publish(self, topic: str, message: bytes) -> None:
        """Send ``message`` to everyone subscribed to ``topic`` now; never blocks long.

        Slow subscribers lose messages rather than slowing the publisher down.
        """

    def subscribe(self, topic: str) -> AbstractAsyncContextManager[Subscription]:
        """Subscribe for the duration of the block; messages published after entering
        it are delivered (the subscription is active when ``__aenter__`` returns)."""

    async def close(self) -> None:
        """Release connections. Idempotent."""
