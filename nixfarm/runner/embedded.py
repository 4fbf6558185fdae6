"""The runner ``nixfarm up`` runs inside the server process.

It is an ordinary runner: it talks to its own server over HTTP with the runner token
``nixfarm up`` left in ``DATA_DIR/runner.token``, so the one-process farm and the
scale-out farm run jobs through the same code.

When the supervisor asks the farm to stop (``draining.DRAIN_SIGNAL``), the runner
stops as any runner does (``Agent.stop``, with ``jobs.shutdown_grace_seconds``) while
the server still answers it, then tells the supervisor it is done.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from nixfarm import draining, images
from nixfarm.config import Settings
from nixfarm.datadir import RUNNER_TOKEN, read_token
from nixfarm.runner.agent import Agent
from nixfarm.runner.imageupdates import ImageUpdater
from nixfarm.runner.nixd import NixDaemon
from nixfarm.runner.protocol import RunnerClient
from nixfarm.runner.roots import Catalogue, Images
from nixfarm.runner.sandbox.choice import choose_kinds
from nixfarm.runner.workdir import runner_dir

#: Seconds the embedded runner waits for the farm's port before its first call.
START_WAIT = 60.0


def images_for(settings: Settings, built_dir: Path) -> Images:
    """The images a runner next to this server offers: the catalogue, and ``nix``
    from the registry's package source when it is a local directory."""
    source = settings.registry.source
    nix_source = Path(source.location) if source.kind == "path" and source.location else None
    return Images(Catalogue(built_dir), nix_source=nix_source,
                  nix_options=dict(settings.nix_options),
                  nix_timeout=max(settings.registry.nix_timeout, 300.0))


async def serve(settings: Settings) -> None:
    """Run the embedded runner until cancelled (a no-op without its token)."""
    token = read_token(settings.data_dir / RUNNER_TOKEN)
    slots = settings.jobs.embedded_runner_slots
    if slots <= 0 or not token:
        return  # nothing to drain: the supervisor's default answer stands
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    url = f"http://{host}:{settings.port}"
    client = RunnerClient(url, token)
    stopping = asyncio.Event()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        asyncio.get_running_loop().add_signal_handler(draining.DRAIN_SIGNAL, stopping.set)
    try:
        # nginx starts once this worker accepts: wait for its port quietly rather than
        # have the first registration fail (and say so) at every start.
        waiting = asyncio.create_task(_listening(host, settings.port, within=START_WAIT))
        stopped_early = asyncio.create_task(stopping.wait())
        await asyncio.wait([waiting, stopped_early], return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        stopped_early.cancel()
        if stopping.is_set():
            return
        home = runner_dir(settings.data_dir / "runner")
        sandbox = await choose_kinds(
            settings.jobs.embedded_runner_sandbox, home,
            vm_pool=settings.jobs.embedded_runner_vm_pool,
            vm_pool_memory=settings.jobs.embedded_runner_vm_pool_mib * 1024**2)
        agent = Agent(client, images_for(settings, home / "images"),
                      name="embedded", slots=slots, work_root=home / "jobs",
                      new_sandbox=sandbox.new_sandbox, sandbox_kinds=sandbox.kinds,
                      accelerator=sandbox.accelerator,
                      # Long-polls as long as a runner's own: stopping (the drain
                      # signal) cancels the one open, and the server sees it hang up.
                      nix=NixDaemon(
                          home, dict(settings.nix_options),
                          farm_urls=[url, settings.base_url]),
                      image_updates=ImageUpdater(
                          client, home / "images", home / "image-builds",
                          recipes=Path(settings.jobs.embedded_runner_image_recipes
                                       or images.RECIPES),
                          vm_dir=home / "vm")
                      if settings.jobs.embedded_runner_image_updates
                      and "vm" in sandbox.kinds else None)
        serving = asyncio.create_task(agent.serve())
        asked = asyncio.create_task(stopping.wait())
        try:
            await asyncio.wait([serving, asked], return_when=asyncio.FIRST_COMPLETED)
            if asked.done():
                await agent.stop(settings.jobs.shutdown_grace_seconds)
            await serving
        finally:
            asked.cancel()
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
            await sandbox.aclose()
    finally:
        draining.report_drained()
        await client.close()


async def _listening(host: str, port: int, *, within: float) -> None:
    """Return once ``host:port`` accepts a connection, or after ``within`` seconds (the
    runner's own retries say what is wrong then)."""
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
