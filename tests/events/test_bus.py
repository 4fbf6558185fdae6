"""One conformance test for every event bus: in-process and Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from nixfarm.events.base import EventBus
from nixfarm.events.memory import MemoryBus
from nixfarm.events.redis import RedisBus

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", "redis"])
async def bus(request: pytest.FixtureRequest, anyio_backend: str) -> AsyncIterator[EventBus]:
    made: EventBus = (MemoryBus() if request.param == "memory"
                      else RedisBus(request.getfixturevalue("redis_url")))
    yield made
    await made.close()


async def test_delivers_in_order_to_every_subscriber(bus: EventBus) -> None:
    async with bus.subscribe("t1") as a, bus.subscribe("t1") as b, bus.subscribe("t2") as c:
        for i in range(5):
            await bus.publish("t1", b"%d" % i)
        assert [await a.get(2) for _ in range(5)] == [b"0", b"1", b"2", b"3", b"4"]
        assert [await b.get(2) for _ in range(5)] == [b"0", b"1", b"2", b"3", b"4"]
        assert await c.get(0.1) is None


async def test_get_times_out_and_wakes_at_once(bus: EventBus) -> None:
    async with bus.subscribe("wake") as sub:
        start = anyio.current_time()
        assert await sub.get(0.2) is None
        assert anyio.current_time() - start >= 0.19

        async def later() -> None:
            await anyio.sleep(0.1)
            await bus.publish("wake", b"now")

        async with anyio.create_task_group() as tg:
            tg.start_soon(later)
            start = anyio.current_time()
            assert await sub.get(5) == b"now"
        assert anyio.current_time() - start < 0.5


async def test_nothing_before_subscribing_or_after_leaving(bus: EventBus) -> None:
    await bus.publish("late", b"lost")
    async with bus.subscribe("late") as sub:
        assert await sub.get(0.1) is None
    await bus.publish("late", b"nobody listens")  # no error without subscribers
