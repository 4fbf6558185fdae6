"""The job page's log tail on a real filesystem store: true line numbers, and a first
view of a large log that reads the tail it draws, not the log before it."""

from __future__ import annotations

from pathlib import Path

import pytest

from nixfarm.builds.logs import LogService
from nixfarm.events.memory import MemoryBus
from nixfarm.server.pages import logview
from nixfarm.wire.runners import MAX_LOG_CHUNK
from tests.fixtures.counting import CountingStore

pytestmark = pytest.mark.anyio

#: Chunks a runner could send (at most MAX_LOG_CHUNK), cut inside lines.
CHUNK = 300_007


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _log() -> bytes:
    return b"".join(f"line {n:07d} \x1b[32mok\x1b[0m {'.' * (n % 90)}\n".encode()
                    for n in range(1, 200_000))


async def test_first_view_reads_the_tail_only(tmp_path: Path) -> None:
    text = _log()  # about 15 MB
    assert CHUNK <= MAX_LOG_CHUNK and len(text) > 40 * logview.TAIL_BYTES
    store = CountingStore(tmp_path / "store")
    logs = LogService(store, MemoryBus())
    for seq, at in enumerate(range(0, len(text), CHUNK)):
        assert await logs.append(7, "build", seq, text[at:at + CHUNK])

    store.bytes_read = 0
    shown = await logview.view(logs, 7, "build")
    # The tail, and of the chunk it starts in the part before it: not the log.
    assert store.bytes_read <= logview.TAIL_BYTES + CHUNK, store.bytes_read
    _check(shown, text)

    # A log stored without its counts (before they were kept) reads as it did: the
    # same view, its chunks read and counted once.
    async for info in store.list("jobs/7/lines/"):
        await store.delete(info.key)
    uncounted = LogService(store, MemoryBus())
    store.bytes_read = 0
    assert await logview.view(uncounted, 7, "build") == shown
    assert store.bytes_read >= len(text) - logview.TAIL_BYTES
    store.bytes_read = 0
    assert await logview.view(uncounted, 7, "build") == shown
    assert store.bytes_read <= logview.TAIL_BYTES + CHUNK


def _check(shown: logview.LogView, text: bytes) -> None:
    """The view draws whole lines from within the tail on, numbered as in the log."""
    start = len(text) - logview.TAIL_BYTES
    first = text.index(b"\n", start - 1) + 1  # the first line starting in the tail
    assert (shown.size, shown.hidden) == (len(text), first)
    assert shown.first_line == text.count(b"\n", 0, first) + 1
    assert f"line {shown.first_line:07d}" in shown.lines[0]
    assert len(shown.lines) == text.count(b"\n", first)
    assert shown.open_line == "" and shown.open_bytes == 0
