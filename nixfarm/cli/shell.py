"""``nixfarm shell JOB [-- CMD...]``: a terminal in a failed (or ``shell: true``) job's
sandbox, kept by its runner for ``jobs.shell_hold_minutes`` (docs/jobs.md)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import termios
import tty
from typing import Annotated

import typer

from nixfarm.cli.common import DataDir, Exit, JobNumber, Token, Url, run
from nixfarm.client.api import resolve
from nixfarm.client.shell import open_shell, pump


def shell(
    job: JobNumber,
    command: Annotated[list[str] | None, typer.Argument(
        metavar="[-- CMD...]", help="Run CMD (not interactive) instead of a login shell; "
                                    "exit with its status.", show_default=False)] = None,
    url: Url = None, token: Token = None, data_dir: DataDir = None,
) -> None:
    """Open a terminal in JOB's sandbox (as user build), kept after a failure or with
    shell: true. Exits with the shell's (or CMD's) exit status."""
    endpoint = resolve(url, token, data_dir)
    interactive = not command
    stdin = sys.stdin.fileno()
    terminal = interactive and os.isatty(stdin)
    size = shutil.get_terminal_size((80, 24))

    async def work() -> int:
        async with open_shell(endpoint, job, command or None, size.lines, size.columns) as sh:
            loop = asyncio.get_running_loop()
            sizes: set[asyncio.Task[None]] = set()
            if terminal:
                def resized() -> None:
                    now = shutil.get_terminal_size((80, 24))
                    task = loop.create_task(sh.resize(now.lines, now.columns))
                    sizes.add(task)
                    task.add_done_callback(sizes.discard)

                loop.add_signal_handler(signal.SIGWINCH, resized)
            keys = asyncio.create_task(pump(stdin, sh)) if interactive else None
            try:
                async for data in sh.output():
                    sys.stdout.buffer.write(data)
                    sys.stdout.buffer.flush()
            finally:
                if keys is not None:
                    keys.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await keys
                if terminal:
                    loop.remove_signal_handler(signal.SIGWINCH)
            return sh.status or 0

    saved = termios.tcgetattr(stdin) if terminal else None
    try:
        if terminal:
            tty.setraw(stdin)  # keys (^C included) go to the remote terminal as typed
        status = run(work)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
    if status:
        raise Exit(status)
