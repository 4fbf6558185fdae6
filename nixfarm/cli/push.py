"""``nixfarm push``: upload store paths and their closures into a cache."""

from __future__ import annotations

import time
from typing import Annotated, Literal

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from nixfarm.cli.common import DataDir, Token, Url, err, out, with_client
from nixfarm.client.api import Client
from nixfarm.client.push import STALL_SECONDS
from nixfarm.client.push import push as push_closure
from nixfarm.sizes import describe_size


def push(
    paths: Annotated[list[str], typer.Argument(
        metavar="PATH...", help="Store paths (or ./result links).", show_default=False)],
    cache: Annotated[str, typer.Option(
        "--cache", metavar="NAME", help="The cache to push into.", show_default=False)],
    compression: Annotated[Literal["zstd", "xz", "none"], typer.Option(
        help="How NARs are compressed on the way.")] = "zstd",
    jobs: Annotated[int, typer.Option(
        "--jobs", "-j", metavar="N", help="Parallel uploads.", min=1)] = 4,
    stall: Annotated[float, typer.Option(
        "--timeout", metavar="SECONDS", min=1,
        help="An upload that makes no progress this long is given up and tried again "
             "(3 tries in all).")] = STALL_SECONDS,
    url: Url = None, token: Token = None, data_dir: DataDir = None,
) -> None:
    """Push the closures of PATHs, uploading only what the cache lacks. On a terminal
    it shows bytes, throughput and the paths being sent; elsewhere, a summary."""
    progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), TimeRemainingColumn(), console=err,
                        transient=True)
    task = progress.add_task("pushing", total=None)
    sending: list[str] = []
    sent = [0]
    started = time.monotonic()

    def on_plan(closure: int, missing: int, nar_bytes: int) -> None:
        err.print(f"{closure} paths in the closure, {missing} to upload", markup=False)
        progress.update(task, total=nar_bytes)
        if missing and err.is_terminal:
            progress.start()  # only now: a refusal before this prints just its error

    def on_path(path: str, done: bool) -> None:
        name = path.rsplit("/", 1)[-1].split("-", 1)[-1]
        if done:
            sending.remove(name)
            if err.is_terminal:
                progress.console.print(f"pushed {path}", markup=False, highlight=False)
        else:
            sending.append(name)
        shown = ", ".join(sending[:3]) + (f" +{len(sending) - 3}" if len(sending) > 3 else "")
        progress.update(task, description=shown or "pushing")

    def tick(n: int) -> None:
        sent[0] += n
        progress.advance(task, n)

    async def work(c: Client) -> list[str]:
        try:
            return await push_closure(
                c, cache, paths, compression=compression, jobs=jobs, on_plan=on_plan,
                progress=tick, on_path=on_path, stall=stall)
        finally:
            if progress.live.is_started:
                progress.stop()

    pushed = with_client(url, token, data_dir, work)
    seconds = max(time.monotonic() - started, 1e-3)
    err.print(f"pushed {len(pushed)} paths, {describe_size(sent[0])} of NARs in {seconds:.1f} s "
              f"({describe_size(sent[0] / seconds)}/s)", markup=False)
    for path in pushed:
        out.print(path, markup=False)
