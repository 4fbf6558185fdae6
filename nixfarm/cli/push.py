"""``nixfarm push``: upload store paths and their closures into a cache."""

from __future__ import annotations

from typing import Annotated

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
from nixfarm.client.push import push as push_closure


def push(
    paths: Annotated[list[str], typer.Argument(help="Store paths (or ./result links).")],
    cache: Annotated[str, typer.Option("--cache", help="The cache to push into.")],
    compression: Annotated[str, typer.Option(help="zstd, xz or none.")] = "zstd",
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Parallel uploads.")] = 4,
    url: Url = None, token: Token = None, data_dir: DataDir = None,
) -> None:
    """Push the closures of PATHS, uploading only what the cache lacks."""
    if compression not in ("zstd", "xz", "none"):
        raise typer.BadParameter("expected zstd, xz or none", param_hint="--compression")
    progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), TimeRemainingColumn(), console=err,
                        transient=True)
    task = progress.add_task("pushing", total=None)

    def on_plan(closure: int, missing: int, nar_bytes: int) -> None:
        err.print(f"{closure} paths in the closure, {missing} to upload", markup=False)
        progress.update(task, total=nar_bytes)
        if missing:
            progress.start()  # only now: a refusal before this prints just its error

    async def work(c: Client) -> list[str]:
        try:
            return await push_closure(
                c, cache, paths, compression=compression, jobs=jobs, on_plan=on_plan,
                progress=lambda n: progress.advance(task, n))
        finally:
            if progress.live.is_started:
                progress.stop()

    pushed = with_client(url, token, data_dir, work)
    for path in pushed:
        out.print(path, markup=False)
