"""Finishing clean-up work even when the caller is being cancelled.

``asyncio.shield`` alone is not enough: the awaiting task still gets CancelledError
at once (so the clean-up is not finished when the caller moves on), and under anyio
a cancel scope re-delivers cancellation at every await. ``uncancelled`` waits for the
work to finish, whatever arrives meanwhile, and then re-raises a cancellation it
swallowed, so the caller's cancellation still happens, just after the clean-up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


async def uncancelled(work: Awaitable[T]) -> T:
    """Await ``work`` to the end, even if cancelled meanwhile (see module doc)."""
    task = asyncio.ensure_future(work)
    cancelled = False
    with anyio.CancelScope(shield=True):
        while True:
            try:
                result = await asyncio.shield(task)
                break
            except asyncio.CancelledError:
                if task.done():
                    raise
                cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


async def until_either(call: asyncio.Future[Any], event: asyncio.Event) -> None:
    """Wait until ``call`` is done or ``event`` is set, whichever comes first; ``call``
    is left as it is (not cancelled), for the caller to decide."""
    waiting = asyncio.ensure_future(event.wait())
    either: list[asyncio.Future[Any]] = [call, waiting]
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()


async def first_done(*work: Coroutine[Any, Any, object]) -> None:
    """Run ``work`` side by side until one of them ends, then cancel the others (a
    relay's two directions: when either side ends, the relay is over). What they raise
    is dropped: the end of a relay is not an error."""
    tasks = [asyncio.create_task(w) for w in work]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
