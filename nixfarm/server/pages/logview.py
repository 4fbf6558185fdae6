"""A job's logs as the job page draws them: numbered, coloured lines, the tail only.

A log can be hundreds of megabytes; a page that drew it all would freeze the tab. So
the page draws the last ``TAIL_BYTES`` of each log (from the first line that starts
in them) and offers the whole log on request, up to ``FULL_BYTES``, and always as raw
text. Lines keep their true numbers (the permalinks ``#task-build-L120`` must not move
as a log grows), so the page needs how many lines come before what it draws: the
newlines of each earlier chunk, counted once and remembered (chunks never change).

Each drawn log says where it ends (its size in bytes): the page follows the job live
from there (``data-offset``, the SSE ``resume`` position), so nothing is drawn twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from cachetools import LRUCache
from markupsafe import Markup

from nixfarm.builds.logs import LogService
from nixfarm.storage.base import ObjectInfo
from nixfarm.web.ansi import Colouring

#: What a job page draws of a log at first: its last 256 KiB.
TAIL_BYTES = 256 * 1024
#: The most of one log a page draws when asked for all of it; past that, the raw log.
FULL_BYTES = 16 * 1024**2

#: chunk key -> (newlines in it, whether it ends with one); chunks are immutable.
_counted: LRUCache[str, tuple[int, bool]] = LRUCache(maxsize=200_000)


@dataclass(frozen=True)
class LogView:
    #: The task, or None for the setup log.
    task: str | None
    #: What its lines' ids start with: ``setup`` or ``task-<name>``.
    anchor: str
    #: The log's size in bytes: where following it live begins.
    size: int
    #: Bytes not drawn, before the first drawn line.
    hidden: int
    #: The number of the first drawn line.
    first_line: int
    lines: list[Markup]
    #: The drawn text after the last newline (a line still being written), and its
    #: size in bytes: a page that follows the log live resumes before it.
    open_line: Markup
    open_bytes: int

    @property
    def title(self) -> str:
        return self.task if self.task is not None else "setup"


def anchor_of(task: str | None) -> str:
    return "setup" if task is None else f"task-{task}"


async def _count(logs: LogService, chunk: ObjectInfo) -> tuple[int, bool]:
    known = _counted.get(chunk.key)
    if known is None:
        data = await logs.store.read(chunk.key)
        known = (data.count(b"\n"), data.endswith(b"\n"))
        _counted[chunk.key] = known
    return known


async def view(logs: LogService, job_id: int, task: str | None, full: bool = False
               ) -> LogView:
    """The drawn part of a log: its tail, or with ``full`` as much as ``FULL_BYTES``."""
    chunks = await logs.chunks(job_id, task)
    total = sum(c.size for c in chunks)
    start = max(total - (FULL_BYTES if full else TAIL_BYTES), 0)
    lines_before, at_line_start, offset = 0, True, 0
    parts: list[bytes] = []
    for chunk in chunks:
        lo, offset = offset, offset + chunk.size
        if offset <= start:  # wholly before what is drawn: only its newlines count
            count, ends = await _count(logs, chunk)
            lines_before += count
            at_line_start = ends if chunk.size else at_line_start
            continue
        data = await logs.store.read(chunk.key)
        if lo < start:  # the chunk where drawing starts
            cut = start - lo
            lines_before += data.count(b"\n", 0, cut)
            at_line_start = data[cut - 1:cut] == b"\n"
            data = data[cut:]
        parts.append(data)
    data = b"".join(parts)
    hidden = total - len(data)
    if not at_line_start:  # drawn text starts inside a line: from the next one on
        newline = data.find(b"\n")
        cut = len(data) if newline < 0 else newline + 1
        hidden += cut
        data = data[cut:]
        lines_before += 0 if newline < 0 else 1
    lines, open_line = Colouring().feed(data.decode(errors="replace"))
    open_bytes = len(data) - (data.rfind(b"\n") + 1)
    return LogView(task, anchor_of(task), total, hidden, lines_before + 1, lines, open_line,
                   open_bytes)
