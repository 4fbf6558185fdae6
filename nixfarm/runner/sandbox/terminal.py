"""A terminal into a sandbox: a command on a pseudo-terminal, for ``nixfarm shell``.

The runner holds the pty's master; the command, started inside the sandbox as the
build user, has the slave as its stdin, stdout, stderr and controlling terminal (a
session of its own: ``setsid --ctty``). So the kernel's line discipline does what a
terminal does: a ^C byte written to the master sends SIGINT to the foreground process
group, and a new window size (``resize``, TIOCSWINSZ) sends SIGWINCH.

    read()         output as it comes; b"" once the command and everything that held
                   the terminal are gone
    write(data)    keystrokes
    resize(r, c)   the window's size
    wait()         the command's exit status
    close()        kill the command's process group (idempotent)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import signal
import struct
import termios
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol


class Terminal(Protocol):
    async def read(self) -> bytes: ...
    async def write(self, data: bytes) -> None: ...
    def resize(self, rows: int, cols: int) -> None: ...
    async def wait(self) -> int: ...
    async def close(self) -> None: ...


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class PtyTerminal:
    """``argv`` on a host pty (see the module docstring)."""

    def __init__(self, process: asyncio.subprocess.Process, master: int) -> None:
        self.process = process
        self._master = master
        self._output: asyncio.Queue[bytes] = asyncio.Queue()
        self._closed = False
        os.set_blocking(master, False)
        asyncio.get_running_loop().add_reader(master, self._readable)

    @classmethod
    async def start(cls, argv: Sequence[str], env: dict[str, str], rows: int, cols: int
                    ) -> PtyTerminal:
        master, slave = os.openpty()
        try:
            set_size(slave, rows, cols)
            process = await asyncio.create_subprocess_exec(
                "setsid", "--ctty", "--", *argv, stdin=slave, stdout=slave, stderr=slave,
                env=env)  # fmt: skip
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        return cls(process, master)

    def _readable(self) -> None:
        try:
            data = os.read(self._master, 65536)
        except BlockingIOError:
            return
        except OSError as e:  # EIO: no process holds the slave any more
            if e.errno != errno.EIO:
                raise
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self._master)
        self._output.put_nowait(data)

    async def read(self) -> bytes:
        if self._closed and self._output.empty():
            return b""
        return await self._output.get()

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self._closed:
            try:
                written = os.write(self._master, view)
            except BlockingIOError:
                await asyncio.sleep(0.01)
                continue
            except OSError:
                return  # the command is gone
            view = view[written:]

    def resize(self, rows: int, cols: int) -> None:
        if not self._closed:
            set_size(self._master, rows, cols)

    async def wait(self) -> int:
        return await self.process.wait()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            await asyncio.wait_for(self.process.wait(), 10.0)
        asyncio.get_running_loop().remove_reader(self._master)
        os.close(self._master)
        self._output.put_nowait(b"")


class CommandTerminal:
    """A command run without a pty (a VM's agent has no pty op yet): its output lines
    as they come (CRLF-ended, as a terminal shows them), its exit status; keystrokes
    and sizes are ignored. ``start`` gets the line callback and returns the status."""

    def __init__(self, start: Callable[[Callable[[str], None]], Awaitable[int]]) -> None:
        self._output: asyncio.Queue[bytes] = asyncio.Queue()
        self._task = asyncio.ensure_future(self._run(start))

    async def _run(self, start: Callable[[Callable[[str], None]], Awaitable[int]]) -> int:
        try:
            return await start(lambda line: self._output.put_nowait(line.encode() + b"\r\n"))
        finally:
            self._output.put_nowait(b"")

    async def read(self) -> bytes:
        return await self._output.get()

    async def write(self, data: bytes) -> None:
        pass

    def resize(self, rows: int, cols: int) -> None:
        pass

    async def wait(self) -> int:
        return await asyncio.shield(self._task)

    async def close(self) -> None:
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
