"""Processes of a sandbox: their output as lines, their pid namespace, their end.

Small, separate from ``bwrap.py`` so that the sandbox module reads as the sequence of
what it does; nothing here knows about bubblewrap's arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nixfarm.runner.sandbox.base import LineCallback, SandboxError

#: Longer output lines are cut into pieces of this many bytes.
MAX_LINE = 65536


class Lines:
    """Splits a byte stream into lines for a callback; over-long lines are cut.

    The pieces of a cut line go to the callback's ``piece`` method when it has one
    (``masking.LineMasker``: it must see them as one line to mask a secret printed
    across the cut), else to the callback itself, each as a line.
    """

    def __init__(self, on_line: LineCallback) -> None:
        self._on_line = on_line
        self._on_piece: LineCallback = getattr(on_line, "piece", on_line)
        self._partial = b""

    def feed(self, data: bytes) -> None:
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            self._emit(line)
        while len(self._partial) > MAX_LINE:
            self._on_piece(self._decode(self._partial[:MAX_LINE]))
            self._partial = self._partial[MAX_LINE:]

    def close(self) -> None:
        if self._partial:
            self._emit(self._partial)
            self._partial = b""

    def _emit(self, line: bytes) -> None:
        self._on_line(self._decode(line).removesuffix("\r"))

    @staticmethod
    def _decode(data: bytes) -> str:
        return data.decode(errors="replace")


async def feed_stdin(process: asyncio.subprocess.Process, data: bytes | None) -> None:
    if data is None or process.stdin is None:
        return
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        process.stdin.write(data)
        await process.stdin.drain()
    process.stdin.close()


async def read_stream(stream: asyncio.StreamReader, feed: Callable[[bytes], None]) -> None:
    while chunk := await stream.read(65536):
        feed(chunk)


#: How long a command's output is still read after the command ended.
LEFTOVER_SECONDS = 2.0


class OutputPipe:
    """A pipe for a command's output that asyncio's process object does not own.

    In Python 3.11, ``Process.wait()`` returns only once the process's own pipes have
    closed, and a process the command left in the background (``setsid sleep 1d &``)
    keeps them open for ever: the task, and its cancellation, would hang with it.
    With a pipe of our own, ``wait()`` returns when the command ends, and we decide
    how long to read after that (``LEFTOVER_SECONDS``) and when to close.
    """

    def __init__(self, reader: asyncio.StreamReader, transport: asyncio.ReadTransport,
                 write_fd: int) -> None:
        self.reader = reader
        self.write_fd: int | None = write_fd
        self._transport = transport

    @classmethod
    async def open(cls) -> OutputPipe:
        read_fd, write_fd = os.pipe()
        reader = asyncio.StreamReader()
        try:
            transport, _ = await asyncio.get_running_loop().connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", 0))
        except BaseException:
            os.close(write_fd)
            raise
        return cls(reader, transport, write_fd)

    def given(self) -> None:
        """The command has its copy of the write end: close ours, so that EOF comes."""
        if self.write_fd is not None:
            os.close(self.write_fd)
            self.write_fd = None

    def close(self) -> None:
        self.given()
        self._transport.close()

    async def read_after(self, ended: Awaitable[int], lines: Lines,
                         on_line: LineCallback) -> int:
        """Read into ``lines`` until ``ended`` gives the command's status, then until
        EOF or ``LEFTOVER_SECONDS``; the status."""
        reading = asyncio.ensure_future(read_stream(self.reader, lines.feed))
        ending = asyncio.ensure_future(ended)
        try:
            # What the line callback raises (the log limit) ends the wait at once: the
            # command may be blocked writing to a pipe nobody reads any more.
            await asyncio.wait([reading, ending], return_when=asyncio.FIRST_COMPLETED)
            if reading.done() and reading.exception() is not None:
                reading.result()
            status = await ending
            done, _ = await asyncio.wait([reading], timeout=LEFTOVER_SECONDS)
            if reading in done:
                reading.result()
            lines.close()
            if not done:
                on_line("nixfarm: the command ended but a process it left running still "
                        "holds its output; what that process prints is not shown (redirect "
                        "the output of background processes)")
            return status
        finally:
            reading.cancel()
            ending.cancel()
            self.close()


def namespace_members(pid_namespace: str) -> set[int]:
    """Host pids of the processes in ``pid_namespace`` (an ns/pid link's text)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if os.readlink(f"/proc/{entry}/ns/pid") != pid_namespace:
                    continue
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":  # a zombie holds nothing; its parent will reap it
                    found.add(int(entry))
    return found


def kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def read_info(fd: int) -> dict[str, Any]:
    """bwrap's --info-fd document; the pipe may stay open, so parse as it comes."""
    os.set_blocking(fd, False)
    data = b""
    while True:
        with contextlib.suppress(BlockingIOError):
            chunk = os.read(fd, 65536)
            if not chunk:
                raise SandboxError("bubblewrap closed its info pipe without a word.")
            data += chunk
            with contextlib.suppress(ValueError):
                document: dict[str, Any] = json.loads(data)
                return document
        await asyncio.sleep(0.001)


def remove_tree(path: Path) -> None:
    def allow(function: object, name: str, exc: object) -> None:
        # The job may have left directories without write permission (for us too
        # when we are not root): open them up and try again.
        parent = os.path.dirname(name)
        with contextlib.suppress(OSError):
            os.chmod(parent, stat.S_IRWXU)
        with contextlib.suppress(OSError):
            if os.path.isdir(name) and not os.path.islink(name):
                os.chmod(name, stat.S_IRWXU)
                shutil.rmtree(name, ignore_errors=True)
            else:
                os.unlink(name)

    shutil.rmtree(path, onerror=allow)


def descendants(pid: int) -> set[int]:
    """Every process below ``pid``, from /proc/PID/task/*/children."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{parent}/task"):
                with contextlib.suppress(OSError):
                    text = Path(f"/proc/{parent}/task/{task}/children").read_text()
                    for child in map(int, text.split()):
                        if child not in found:
                            found.add(child)
                            todo.append(child)
    return found


def alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (zombies are dead: their parent reaps them)."""
    living = set()
    for pid in pids:
        with contextlib.suppress(OSError, IndexError):
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                living.add(pid)
    return living
