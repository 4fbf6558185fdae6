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
    nix_option: Annotated[list[str] | None, typer.Option(
        help="KEY=VALUE: a Nix option for building images and for the jobs' nix-daemon "
             "(repeatable), e.g. substituters=.")] = None,
    nix_daemon: Annotated[bool, typer.Option(
        help="Give `image: nix` jobs Nix through a nix-daemon (needed for `cache:`).")] = True,
    local_source: Annotated[list[Path] | None, typer.Option(
        help="A directory whose git repositories jobs may clone as file:// sources "
             "(repeatable).")] = None,
    sandbox: Annotated[str, typer.Option(
        help="Where jobs run: bwrap (a container) or vm (a qemu virtual machine).")] = "bwrap",
) -> None:
    """Claim jobs from the farm and run them in sandboxes, until interrupted."""
    from nixfarm import prerequisites
    from nixfarm.client.api import resolve
    from nixfarm.runner.agent import Agent
    from nixfarm.runner.nixd import NixDaemon
    from nixfarm.runner.protocol import RunnerClient
    from nixfarm.runner.roots import Catalogue, Images
    from nixfarm.runner.sandbox.choice import choose
    from nixfarm.runner.workdir import runner_dir

    if sandbox not in ("bwrap", "vm"):
        raise typer.BadParameter(f"{sandbox!r} is not a sandbox: bwrap or vm",
                                 param_hint="--sandbox")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    endpoint = resolve(url, token, data_dir)
    if endpoint.token is None:
        raise typer.BadParameter("a runner token is needed (scope: runner)", param_hint="--token")
    options: dict[str, str] = {}
    for item in nix_option or []:
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--nix-option")
        options[key.strip()] = value.strip()
    prerequisites.require("runner", prerequisites.for_runner(
        options, uses_nix=nix_daemon or nix_source is not None))
    home = runner_dir(work_dir)
    images = Images(Catalogue(home / "images"), nix_source=nix_source, nix_options=options)
    daemon = NixDaemon(home, options) if nix_daemon else None

    async def work() -> None:
        choice = await choose(sandbox, home)  # a SandboxError is the run's error
        client = RunnerClient(endpoint.url, endpoint.token or "")
        try:
            await Agent(client, images, name=name or socket.gethostname(), slots=slots,
                        work_root=home / "jobs", nix=daemon,
                        new_sandbox=choice.new_sandbox, sandbox_kind=choice.kind,
                        accelerator=choice.accelerator,
                        local_sources=list(local_source or [])).serve()
        finally:
            await client.close()

    run(work)
