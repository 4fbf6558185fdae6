"""Single flight: concurrent callers asking for the same key share one piece of work.

Ten clients pulling a new image at once must cause one Nix build and one write of each
layer, and all ten must get the same answer (or the same error). The first caller for a
key starts the work as a task of its own; later callers await that task. The task is
shielded, so a client that hangs up does not cancel work the others (and the caches)
still want; it is forgotten once done, so a failure is not remembered as an answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._running: dict[str, asyncio.Task[T]] = {}

    async def run(self, key: str, work: Callable[[], Awaitable[T]]) -> T:
        """The result of ``work()``, started only if no call for ``key`` is under way."""
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(work())
            self._running[key] = task
            task.add_done_callback(lambda _: self._running.pop(key, None))
        return await asyncio.shield(task)
