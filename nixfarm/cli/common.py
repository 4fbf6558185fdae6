"""What every command shares: connection options, output, and exit codes.

Exit codes (DESIGN.md): 0 success, 1 the operation failed, 2 bad usage or bad input.
Errors are one sentence on stderr; only ``main`` exits the process.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import anyio
import typer
from rich.console import Console

from nixfarm.client.api import Client, resolve
from nixfarm.errors import NixfarmError, exit_code

T = TypeVar("T")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

Url = Annotated[str | None, typer.Option("--url", envvar="NIXFARM_URL",
                                         help="The server's URL.")]
Token = Annotated[str | None, typer.Option("--token", envvar="NIXFARM_TOKEN",
                                           help="An API token.", show_default=False)]
DataDir = Annotated[str | None, typer.Option(
    "--data-dir", envvar="NIXFARM_DATA_DIR",
    help="Data dir of an embedded farm: its URL and admin token are used.")]


class Exit(Exception):
    """Raised by commands to end with a code after printing an error."""

    def __init__(self, code: int) -> None:
        self.code = code


def run(work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work`` in an event loop, turning errors into a message and an exit code."""
    try:
        return anyio.run(work)
    except NixfarmError as e:
        err.print(f"error: {e.message}", markup=False)
        raise Exit(exit_code(e)) from None


def client(url: str | None, token: str | None, data_dir: str | None) -> Client:
    return Client(resolve(url, token, data_dir))


def with_client(url: str | None, token: str | None, data_dir: str | None,
                work: Callable[[Client], Awaitable[T]]) -> T:
    async def go() -> T:
        async with client(url, token, data_dir) as c:
            return await work(c)

    return run(go)
