"""A job's logs as the job page draws them: numbered, coloured lines, the tail only.

A log can be hundreds of megabytes; a page that drew it all would freeze the tab. So
the page draws the last ``TAIL_BYTES`` of each log (from the first line that starts
in them) and offers the whole log on request, up to ``FULL_BYTES``, and always as raw
text. Lines keep their true numbers (the permalinks ``#task-build-L120`` must not move
as a log grows), so the page needs how many lines come before what it draws: the
newlines of each earlier chunk, counted when it was stored (``LogService.lines_before``),
so a first view reads the tail it draws and not the log before it.

Each drawn log says where it ends (its size in bytes): the page follows the job live
from there (``data-offset``, the SSE ``resume`` position), so nothing is drawn twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from markupsafe import Markup

from nixfarm.builds.logs import LogService
from nixfarm.web.ansi import Colouring

#: What a job page draws of a log at first: its last 256 KiB.
TAIL_BYTES = 256 * 1024
#: The most of one log a page draws when asked for all of it; past that, the raw log.
FULL_BYTES = 16 * 1024**2


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


async def view(logs: LogService, job_id: int, task: str | None, full: bool = False
               ) -> LogView:
    """The drawn part of a log: its tail, or with ``full`` as much as ``FULL_BYTES``."""
    where = await logs.tail(job_id, task, FULL_BYTES if full else TAIL_BYTES)
    lines_before, at_line_start = await logs.lines_before(job_id, task, where)
    data = b"".join([part async for part in logs.stream(where)])
    hidden = where.total - len(data)
    if not at_line_start:  # drawn text starts inside a line: from the next one on
        newline = data.find(b"\n")
        cut = len(data) if newline < 0 else newline + 1
        hidden += cut
        data = data[cut:]
        lines_before += 0 if newline < 0 else 1
    lines, open_line = Colouring().feed(data.decode(errors="replace"))
    open_bytes = len(data) - (data.rfind(b"\n") + 1)
    return LogView(task, anchor_of(task), where.total, hidden, lines_before + 1, lines,
                   open_line, open_bytes)
