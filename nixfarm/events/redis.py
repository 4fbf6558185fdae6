"""The event bus over Redis pub/sub, for several servers sharing one Redis.

One connection publishes; each subscription has its own pub/sub connection from the
pool (a subscription is a long-lived thing: a runner's long-poll, an SSE follower).
Redis pub/sub is at-most-once, which is what ``base.EventBus`` promises anyway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import redis.asyncio as aioredis


class RedisSubscription:
    def __init__(self, pubsub: Any) -> None:
        self._pubsub = pubsub

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            message = await self.get(3600)
            if message is not None:
                yield message

    async def get(self, seconds: float) -> bytes | None:
        deadline = anyio.current_time() + max(seconds, 0.0)
        while (remaining := deadline - anyio.current_time()) > 0:
            message = await self._pubsub.get_message(
                ignore_subscribe_messages=True, timeout=remaining)
            if message is not None and message.get("type") == "message":
                data: bytes = message["data"]
                return data
        return None


class RedisBus:
    complete = True  # every server of the farm shares it

    def __init__(self, url: str) -> None:
        self._redis = aioredis.Redis.from_url(url)

    async def publish(self, topic: str, message: bytes) -> None:
        await self._redis.publish(topic, message)

    @asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[RedisSubscription]:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(topic)
            # Wait for Redis to confirm: from then on, every publication reaches us.
            with anyio.fail_after(10):
                while True:
                    confirmation = await pubsub.get_message(timeout=1.0)
                    if confirmation is not None and confirmation["type"] == "subscribe":
                        break
            yield RedisSubscription(pubsub)
        finally:
            with anyio.CancelScope(shield=True):
                await pubsub.unsubscribe(topic)
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        await self._redis.aclose()
