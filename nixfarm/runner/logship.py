"""Ships a job's log lines to the server in chunks, soon after they are printed.

Lines are buffered per log (the setup log and each task's) and sent by one
background task every ``interval`` seconds, or at once when a buffer reaches
``MAX_LOG_CHUNK``. Chunks of one log go in order with consecutive ``seq`` numbers
(from where an earlier run of the job left them, ``start``); a failed send is retried
with the same ``seq`` (the server ignores duplicates), so a line is neither lost nor
doubled. ``close`` sends what is left; ``abandon`` drops it (the farm stops at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nixfarm.errors import NixfarmError
from nixfarm.retries import retried, runner_calls
from nixfarm.runner.protocol import LeaseLost, RunnerClient
from nixfarm.wire.runners import MAX_LOG_CHUNK

log = logging.getLogger("nixfarm.runner")

#: Seconds of failed attempts after which a log chunk is given up (and the loss logged).
GIVE_UP = 300.0


class LogShipper:
    def __init__(self, client: RunnerClient, job_id: int, interval: float = 0.1,
                 start: dict[str | None, int] | None = None) -> None:
        self._client = client
        self._job_id = job_id
        self._interval = interval
        self._buffers: dict[str | None, bytearray] = {}
        self._order: list[str | None] = []
        self._seq: dict[str | None, int] = dict(start or {})
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        # One sender at a time keeps each log's chunks in seq order.
        self._lock = asyncio.Lock()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def line(self, task: str | None, text: str) -> None:
        """Queue one line (no newline) of the setup log (None) or of a task."""
        if task not in self._buffers:
            self._buffers[task] = bytearray()
            self._order.append(task)
        buffer = self._buffers[task]
        buffer += text.encode(errors="replace") + b"\n"
        if len(buffer) >= MAX_LOG_CHUNK // 2:
            self._wake.set()

    async def _send(self, task: str | None, data: bytes) -> None:
        # Retried until the server takes it (the same seq: never doubled) or the job is
        # no longer ours, however many attempts that takes; only a server gone for
        # GIVE_UP seconds ends the job's log, and then loudly.
        seq = self._seq.get(task, 0)
        name = task or "setup"
        policy = runner_calls(f"job {self._job_id}: log chunk {seq} of {name}", log,
                              give_up_after=GIVE_UP)
        try:
            await retried(policy, self._client.log, self._job_id, task, seq, data)
        except LeaseLost:
            raise
        except NixfarmError as e:
            log.error("job %s: log chunk %d of %s lost after %.0f s of failures: %s",
                      self._job_id, seq, name, GIVE_UP, e.message)
            raise
        self._seq[task] = seq + 1

    async def flush(self) -> None:
        """Send what is queued now (the background task keeps running)."""
        async with self._lock:
            await self._flush()

    async def _flush(self) -> None:
        # Logs in the order they first appeared: the setup log before the tasks.
        for task in self._order:
            buffer = self._buffers[task]
            while buffer:
                cut = len(buffer) if len(buffer) <= MAX_LOG_CHUNK else (
                    buffer.rfind(b"\n", 0, MAX_LOG_CHUNK) + 1 or MAX_LOG_CHUNK)
                data = bytes(buffer[:cut])
                del buffer[:cut]
                await self._send(task, data)

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            await self.flush()

    async def close(self) -> None:
        """Send everything queued, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(LeaseLost):
                await self._task
        with contextlib.suppress(LeaseLost):
            await self.flush()

    async def abandon(self) -> None:
        """Stop at once, sending nothing more: the server may be gone, and the job is
        settled without its runner (when the runner registers again)."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, NixfarmError):
                await self._task
