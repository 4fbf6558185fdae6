"""Job logs: numbered chunks in the object store, fanned out live to followers.

A job has one log for its setup (everything before the first task) and one per task.
The runner uploads each as numbered chunks (``seq`` 0, 1, 2, ...); chunk ``n`` of a log
is the object ``jobs/<job>/<log>/<n:08d>`` where ``<log>`` is ``setup`` or
``tasks/<name>``. Objects are immutable, so appending is writing a new object: no
read-modify-write, and a retried upload of the same ``seq`` is recognised and ignored.

Reading a byte range lists the log's chunks (key order is ``seq`` order, and a
listing carries sizes), skips whole chunks before the range and streams the rest.

Line counts. A page that draws a log's tail numbers its lines, so it needs how many
newlines come before the tail. Each chunk's are counted when it is stored and kept in
the *name* of an empty object, ``jobs/<job>/lines/<log>/<n:08d>.<newlines>.<0|1>``
(the last: whether the chunk ends with a newline), so that one listing gives every
chunk's count and the first view of a 100 MB log reads its tail, not the log. A chunk
stored before these existed (or whose count was lost to a crash between the two
writes) is read and counted once, then remembered.

Following: a follower subscribes to the job's topic on the event bus *first*, then
replays the stored chunks, then forwards live ones, dropping any ``seq`` it has already
sent. Subscribing first means a chunk stored during the replay is seen either in the
listing or on the bus (or both, and deduplicated), never neither. A live message lost
(a slow follower's queue overflowed) shows as a gap in ``seq``, filled from the store.

A follower knows how far it is in each log, in bytes (:class:`Positions`): that is the
id of each Server-Sent Event, and a follower that reconnects with it (``Last-Event-ID``)
is replayed only what comes after, so nothing is sent twice or skipped.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from cachetools import LRUCache

from nixfarm.errors import InvalidInput
from nixfarm.events.base import EventBus
from nixfarm.storage.base import ObjectInfo, ObjectStore, ObjectStream

CHUNK_DIGITS = 8
MAX_SEQ = 10**CHUNK_DIGITS - 1


def job_topic(job_id: int) -> str:
    """Bus topic of everything followers of a job see: log chunks, task and job states."""
    return f"job.{job_id}"


def log_prefix(job_id: int, task: str | None) -> str:
    return f"jobs/{job_id}/setup/" if task is None else f"jobs/{job_id}/tasks/{task}/"


def _lines_prefix(job_id: int, task: str | None) -> str:
    """Where the line counts of a log's chunks are (see Line counts above)."""
    return f"jobs/{job_id}/lines/setup/" if task is None \
        else f"jobs/{job_id}/lines/tasks/{task}/"


def _seq_of(key: str) -> int:
    return int(key.rsplit("/", 1)[1].split(".", 1)[0])


class Positions:
    """How far a follower has read each log of its stream, as byte offsets.

    Written (the event id) as the offsets joined by commas in the stream's log order:
    the setup log, then each task in the manifest's order; a one-log stream's id is
    that log's byte offset. Made from the ``Last-Event-ID`` a follower resumes with
    (None: from the start), checked against the stream's logs by :meth:`start`.
    """

    def __init__(self, resume: str | None = None) -> None:
        self._resume = resume
        self.offsets: dict[str | None, int] = {}

    def start(self, logs: Sequence[str | None]) -> None:
        """Begin ``logs`` where ``resume`` says; InvalidInput if it names no position."""
        offsets = [0] * len(logs)
        if self._resume:
            text = self._resume.strip()
            if not re.fullmatch(r"[0-9]{1,15}(,[0-9]{1,15})*", text) \
                    or text.count(",") != len(logs) - 1:
                raise InvalidInput(
                    f"Last-Event-ID {self._resume!r} is not a position in this stream: it "
                    f"takes {len(logs)} byte offset(s) joined by commas", field="last-event-id")
            offsets = [int(part) for part in text.split(",")]
        self.offsets = dict(zip(logs, offsets, strict=True))

    def __str__(self) -> str:
        return ",".join(str(offset) for offset in self.offsets.values())


@dataclass(frozen=True)
class Chunk:
    """A stored chunk of a log, as a replay from a byte offset sees it."""

    seq: int
    #: The byte offset just past the chunk in its log.
    end: int
    #: Its bytes from the offset on; None when it ends before the offset (not read).
    data: bytes | None


@dataclass(frozen=True)
class LogRange:
    """The bytes ``[start, end)`` of a log whose whole size is ``total``."""

    start: int
    end: int
    total: int
    chunks: list[ObjectInfo]


class LogService:
    def __init__(self, store: ObjectStore, bus: EventBus) -> None:
        self.store = store
        self.bus = bus
        #: chunk key -> (newlines, ends with one), for chunks stored without a count.
        self._counted: LRUCache[str, tuple[int, bool]] = LRUCache(maxsize=200_000)

    async def append(self, job_id: int, task: str | None, seq: int, data: bytes) -> bool:
        """Store chunk ``seq`` of a log and publish it; False if it was already stored."""
        if not 0 <= seq <= MAX_SEQ:
            raise InvalidInput(f"seq must be between 0 and {MAX_SEQ}", field="seq")
        key = f"{log_prefix(job_id, task)}{seq:0{CHUNK_DIGITS}d}"
        if await self.store.stat(key) is not None:
            return False
        await self.store.put(key, data)
        newlines, ends = data.count(b"\n"), int(data.endswith(b"\n"))
        await self.store.put(f"{_lines_prefix(job_id, task)}{seq:0{CHUNK_DIGITS}d}"
                             f".{newlines}.{ends}", b"")
        await self.publish(job_id, {"type": "log", "task": task, "seq": seq, "size": len(data),
                                    "text": data.decode(errors="replace")})
        return True

    async def publish(self, job_id: int, event: dict[str, object]) -> None:
        await self.bus.publish(job_topic(job_id), json.dumps(event).encode())

    async def chunks(self, job_id: int, task: str | None) -> list[ObjectInfo]:
        return [info async for info in self.store.list(log_prefix(job_id, task))]

    async def locate(self, job_id: int, task: str | None, start: int,
                     end: int | None) -> LogRange:
        """The chunks holding ``[start, end)`` (clamped to the log's size)."""
        chunks = await self.chunks(job_id, task)
        total = sum(c.size for c in chunks)
        end = total if end is None else min(end, total)
        return LogRange(min(start, end), end, total, chunks)

    async def tail(self, job_id: int, task: str | None, size: int) -> LogRange:
        """The chunks holding the last ``size`` bytes of a log."""
        chunks = await self.chunks(job_id, task)
        total = sum(c.size for c in chunks)
        return LogRange(max(total - size, 0), total, total, chunks)

    async def lines_before(self, job_id: int, task: str | None, where: LogRange
                           ) -> tuple[int, bool]:
        """The newlines of a log before a located range, and whether the range starts
        a line. Reads no chunk wholly before the range that has its count stored, and
        of the chunk the range starts in only the part before it."""
        counts: dict[int, tuple[int, bool]] = {}
        async for info in self.store.list(_lines_prefix(job_id, task)):
            seq, count, last = info.key.rsplit("/", 1)[1].split(".")
            counts[int(seq)] = (int(count), last == "1")
        lines, at_line_start, offset = 0, True, 0
        for chunk in where.chunks:
            lo, offset = offset, offset + chunk.size
            if lo >= where.start:
                break
            if not chunk.size:
                continue
            if offset <= where.start:  # wholly before the range: only its count
                newlines, ends = counts.get(_seq_of(chunk.key)) or await self._count(chunk)
            else:  # the range starts inside it
                head = b"".join([part async for part in self.store.get(
                    chunk.key, 0, where.start - lo)])
                newlines, ends = head.count(b"\n"), head.endswith(b"\n")
            lines += newlines
            at_line_start = ends
        return lines, at_line_start

    async def _count(self, chunk: ObjectInfo) -> tuple[int, bool]:
        """Count a chunk stored without its line count (once: chunks never change)."""
        known = self._counted.get(chunk.key)
        if known is None:
            data = await self.store.read(chunk.key)
            known = (data.count(b"\n"), data.endswith(b"\n"))
            self._counted[chunk.key] = known
        return known

    async def stream(self, where: LogRange) -> AsyncIterator[bytes]:
        """The bytes of a located range, streamed chunk object by chunk object."""
        offset = 0
        for chunk in where.chunks:
            lo, hi = offset, offset + chunk.size
            offset = hi
            if hi <= where.start or lo >= where.end:
                continue
            stream: ObjectStream = self.store.get(chunk.key, max(where.start - lo, 0),
                                                  min(where.end, hi) - lo)
            async for data in stream:
                yield data

    async def replay(self, job_id: int, task: str | None, since: int = 0
                     ) -> AsyncIterator[Chunk]:
        """Every stored chunk of a log in order, read from byte ``since`` on."""
        end = 0
        for info in await self.chunks(job_id, task):
            start, end = end, end + info.size
            seq = int(info.key.rsplit("/", 1)[1])
            if end <= since and info.size:
                yield Chunk(seq, end, None)
                continue
            offset = max(since - start, 0)
            data = b"" if offset >= info.size else await self._read(info.key, offset)
            yield Chunk(seq, end, data)

    async def _read(self, key: str, offset: int) -> bytes:
        if offset == 0:
            return await self.store.read(key)
        return b"".join([part async for part in self.store.get(key, offset, None)])
