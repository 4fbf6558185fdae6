"""``nixfarm runner``: a runner on this machine for a farm elsewhere."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer

from nixfarm.cli.common import DataDir, Token, Url, err, run
from nixfarm.supervisor import kill_descendants

DEFAULT_WORK_DIR = Path("/var/lib/nixfarm-runner")
#: Where the runner takes its token from, when not from --token-file.
TOKEN_VARIABLE = "NIXFARM_RUNNER_TOKEN"


def _hide_token_from_argv() -> None:
    """Start again without ``--token`` on the command line (see ``runner``)."""
    args = sys.argv[1:]
    kept: list[str] = []
    token: str | None = None
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--token" and index + 1 < len(args):
            token, index = args[index + 1], index + 2
            continue
        if arg.startswith("--token="):
            token = arg.split("=", 1)[1]
        else:
            kept.append(arg)
        index += 1
    if token is None:
        return
    err.print("warning: --token puts the runner's token where every local user can read it "
              f"(/proc/PID/cmdline); use --token-file or {TOKEN_VARIABLE}. Restarting "
              "without it.", markup=False)
    os.environ[TOKEN_VARIABLE] = token
    os.execv(sys.executable, [sys.executable, sys.argv[0], *kept])


def _read_token(token_file: Path | None, given: str | None) -> str | None:
    if token_file is not None:
        try:
            text = token_file.read_text().strip()
        except OSError as e:
            raise typer.BadParameter(f"cannot read {token_file}: {e.strerror}",
                                     param_hint="--token-file") from None
        if not text:
            raise typer.BadParameter(f"{token_file} is empty", param_hint="--token-file")
        return text
    return os.environ.pop(TOKEN_VARIABLE, None) or given


def runner(
    url: Url = None, token: Token = None, data_dir: DataDir = None,
    token_file: Annotated[Path | None, typer.Option(
        help=f"A file holding the runner's token (or set {TOKEN_VARIABLE}); --token works "
             "but is taken off the command line at once.")] = None,
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
    shutdown_grace: Annotated[float, typer.Option(
        help="On SIGTERM or Ctrl-C: seconds running jobs get to end before they are "
             "interrupted (and queued again once); a second signal stops at once.",
        min=0)] = 30.0,
    sandbox: Annotated[str, typer.Option(
        help="Where jobs run: bwrap (a container), vm (a qemu virtual machine), or both, "
             "preferred first (vm,bwrap): disk images (debian/bookworm) need vm.")] = "bwrap",
    vm_pool: Annotated[int, typer.Option(
        help="VMs kept booted and unused for the next jobs (each used once), so a job "
             "starts without waiting for a boot; 0: none (docs/vm.md).", min=0)] = 0,
    vm_pool_memory: Annotated[int, typer.Option(
        help="MiB of guest RAM the pool's VMs may hold together (each counted at its "
             "job's memory limit).", min=1)] = 4096,
    image_updates: Annotated[bool, typer.Option(
        help="Install the builds of the farm's image schedules by itself: each new build "
             "of a disk image installed here is fetched, checked against this machine's "
             "recipe, booted for its sanity_check and installed (needs vm; "
             "docs/images.md).")] = False,
    image_recipes: Annotated[Path | None, typer.Option(
        help="The recipes --image-updates checks builds against (default: nixfarm's "
             "own).")] = None,
) -> None:
    """Claim jobs from the farm and run them in sandboxes, until interrupted."""
    # A token on the command line is in /proc/PID/cmdline for every local user to
    # read: the runner starts itself again with it in its environment instead (only
    # root and its own user may read /proc/PID/environ).
    _hide_token_from_argv()
    token = _read_token(token_file, token)
    from nixfarm import prerequisites
    from nixfarm.client.api import resolve
    from nixfarm.images import RECIPES
    from nixfarm.runner.agent import Agent
    from nixfarm.runner.imageupdates import ImageUpdater
    from nixfarm.runner.nixd import NOT_ROOT, NixDaemon
    from nixfarm.runner.protocol import RunnerClient
    from nixfarm.runner.roots import Catalogue, Images
    from nixfarm.runner.sandbox.base import SandboxError
    from nixfarm.runner.sandbox.choice import choose_kinds, parse_kinds
    from nixfarm.runner.workdir import runner_dir

    try:
        parse_kinds(sandbox)
    except SandboxError as e:
        raise typer.BadParameter(e.message, param_hint="--sandbox") from None
    if nix_daemon and os.geteuid() != 0:
        # Refused rather than falling back to the system's daemon (docs/security.md).
        raise typer.BadParameter(NOT_ROOT, param_hint="--nix-daemon")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    endpoint = resolve(url, token, data_dir)
    if endpoint.token is None:
        raise typer.BadParameter(f"a runner token is needed (scope: runner): --token-file or "
                                 f"{TOKEN_VARIABLE}", param_hint="--token-file")
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
    daemon = NixDaemon(home, options, farm_urls=(endpoint.url,)) if nix_daemon else None

    async def work() -> None:
        # A SandboxError is the run's error.
        choice = await choose_kinds(sandbox, home, vm_pool=vm_pool,
                                    vm_pool_memory=vm_pool_memory * 1024**2)
        client = RunnerClient(endpoint.url, endpoint.token or "")
        agent = Agent(client, images, name=name or socket.gethostname(), slots=slots,
                      work_root=home / "jobs", nix=daemon,
                      new_sandbox=choice.new_sandbox,
                      sandbox_kinds=choice.kinds, accelerator=choice.accelerator,
                      local_sources=list(local_source or []),
                      image_updates=ImageUpdater(
                          client, home / "images", home / "image-builds",
                          recipes=image_recipes or RECIPES, vm_dir=home / "vm")
                      if image_updates and "vm" in choice.kinds else None)
        if image_updates and "vm" not in choice.kinds:
            err.print("nixfarm runner: --image-updates needs the vm sandbox (a build is "
                      "booted for its sanity check): off", markup=False)
        stops: list[asyncio.Task[None]] = []

        def on_signal(signum: int) -> None:
            if stops:  # the second: nothing waits any more
                err.print("nixfarm runner: stopping at once", markup=False)
                kill_descendants(os.getpid())
                os._exit(128 + signum)
            err.print(f"nixfarm runner: stopping; running jobs get up to {shutdown_grace:g} "
                      "s to end (signal again to stop at once)", markup=False)
            stops.append(asyncio.create_task(agent.stop(shutdown_grace)))

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            await agent.serve()
        finally:
            await choice.aclose()
            await client.close()

    run(work)
