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


JsonOut = Annotated[bool, typer.Option(
    "--json", help="Print JSON (one document) instead of a table.")]

#: The largest job number (the database's 64-bit ids).
_MAX_ID = 2**63 - 1


def _job_number(value: str | int) -> int:
    text = str(value)
    if not text.isdigit() or not 0 < int(text) <= _MAX_ID:
        raise typer.BadParameter(f"{text!r} is not a job number (a whole number, like 42)")
    return int(text)


def whole_number(lowest: int, highest: int) -> Callable[[str | int], int]:
    """A parser of whole numbers from ``lowest`` to ``highest``, saying so otherwise."""
    def parse(value: str | int) -> int:
        text = str(value)  # the default comes as it is
        if not text.strip().isdigit() or not lowest <= int(text) <= highest:
            raise typer.BadParameter(f"{text!r} is not a whole number from {lowest} to "
                                     f"{highest}")
        return int(text)

    return parse


JobNumber = Annotated[int, typer.Argument(
    metavar="JOB", parser=_job_number, help="The job's number.", show_default=False)]


def print_json(value: object) -> None:
    """``value`` (wire models, lists of them, plain data) as JSON on stdout."""
    from pydantic import TypeAdapter

    out.out(TypeAdapter(type(value)).dump_json(value, indent=2).decode(), highlight=False)


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
