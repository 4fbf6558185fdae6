"""``nixfarm runner``: a runner on this machine for a farm elsewhere."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Annotated

import typer

from nixfarm.cli.common import DataDir, Token, Url, run

DEFAULT_WORK_DIR = Path("/var/lib/nixfarm-runner")


def runner(
    url: Url = None, token: Token = None, data_dir: DataDir = None,
    name: Annotated[str, typer.Option(help="How the farm lists this runner.")] = "",
    slots: Annotated[int, typer.Option(help="Jobs run at once.", min=1)] = 1,
    work_dir: Annotated[Path, typer.Option(
        help="Where images are built and jobs keep their files.")] = DEFAULT_WORK_DIR,
    nix_source: Annotated[Path | None, typer.Option(
        help="A Nix package set (a directory with default.nix) for `image: nix` jobs.")] = None,
) -> None:
    """Claim jobs from the farm and run them in sandboxes, until interrupted."""
    from nixfarm.client.api import resolve
    from nixfarm.runner.agent import Agent
    from nixfarm.runner.images import Catalogue, Images
    from nixfarm.runner.protocol import RunnerClient
    from nixfarm.runner.workdir import runner_dir

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    endpoint = resolve(url, token, data_dir)
    if endpoint.token is None:
        raise typer.BadParameter("a runner token is needed (scope: runner)", param_hint="--token")
    home = runner_dir(work_dir)
    images = Images(Catalogue(home / "images"), nix_source=nix_source)

    async def work() -> None:
        client = RunnerClient(endpoint.url, endpoint.token or "")
        try:
            await Agent(client, images, name=name or socket.gethostname(), slots=slots,
                        work_root=home / "jobs").serve()
        finally:
            await client.close()

    run(work)
