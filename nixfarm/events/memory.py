"""The in-process event bus: a set of bounded queues per topic."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

# Per subscriber; a follower that falls this far behind loses messages (and can
# recover them from storage) instead of growing the server's memory.
QUEUE_SIZE = 1024


class MemorySubscription:
    def __init__(self, receive: MemoryObjectReceiveStream[bytes]) -> None:
        self._receive = receive

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for message in self._receive:
            yield message

    async def get(self, seconds: float) -> bytes | None:
        with anyio.move_on_after(max(seconds, 0.0)):
            return await self._receive.receive()
        return None


class MemoryBus:
    def __init__(self, *, complete: bool = False) -> None:
        """``complete``: this process is the farm's only server (``EventBus``)."""
        self.complete = complete
        self._topics: dict[str, set[MemoryObjectSendStream[bytes]]] = defaultdict(set)

    async def publish(self, topic: str, message: bytes) -> None:
        for send in list(self._topics.get(topic, ())):
            try:
                send.send_nowait(message)
            except anyio.WouldBlock:
                pass  # a slow subscriber loses this one; see base.py
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._topics[topic].discard(send)

    @asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[MemorySubscription]:
        send, receive = anyio.create_memory_object_stream[bytes](QUEUE_SIZE)
        self._topics[topic].add(send)
        try:
            yield MemorySubscription(receive)
        finally:
            subscribers = self._topics.get(topic)
            if subscribers is not None:
                subscribers.discard(send)
                if not subscribers:
                    del self._topics[topic]
            send.close()
            receive.close()

    async def close(self) -> None:
        self._topics.clear()

