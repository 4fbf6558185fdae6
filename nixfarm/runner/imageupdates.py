"""A runner installs the image builds of the farm's image schedules itself.

An admin's image schedule (``nixfarm image schedule``) runs a distro's build.yml as a
job; when such a job succeeds, the server publishes it (bus topic ``images.built``)
and answers the long-poll ``POST /api/v1/runners/ID/image-builds`` of every runner
that offers that image. No loop here wakes every second: the call is held by the
server up to ``wait`` seconds, and made again when it returns.

For each new build of a disk image installed in its catalogue (a runner serves only
what it has: it never installs an image nobody put there), the runner

1. fetches ``recipe.sha256`` and ``root.img.qcow2`` through its own API route, and
   checks them: the recipe hash must be its own recipe's (``recipes``), each file the
   size and SHA-256 the server took at upload (``imaging.fetch_job_build``, the code
   ``nixfarm image install --from-job`` runs);
2. boots it in a VM and runs its ``sanity_check`` and ``poweroff_cmd``
   (``imaging.check``);
3. installs it with ``images.install``: one ``rename`` of the image's symlink. A job
   that booted the old image keeps its open file; the next job gets the new one. The
   agent then offers anew (``register(refresh=True)``), with which build each image
   is (``image_builds`` of ``GET /api/v1/runners``).

A build that fails a check is refused: the old image stays, a warning is logged, and
the runner's ``image_builds`` says ``job N refused: why``. A refused build is not
tried again until the runner restarts (it then asks for the latest build of each
image, and tries that one if it is newer than the one installed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from nixfarm import images
from nixfarm.errors import NixfarmError
from nixfarm.runner import imaging
from nixfarm.runner.protocol import RunnerClient
from nixfarm.wire.runners import ImageBuildOut

log = logging.getLogger("nixfarm.runner")

#: Seconds between tries after the server could not be asked (it restarts).
RETRY = 10.0


def installed_job(directory: Path) -> tuple[int, str] | None:
    """The job (and its end, ISO 8601) that built the image installed at ``directory``,
    if a job did."""
    try:
        stamp = (directory / images.BUILD_JOB_FILE).read_text().split()
    except OSError:
        return None
    if not stamp or not stamp[0].isdigit():
        return None
    return int(stamp[0]), stamp[1] if len(stamp) > 1 else ""


@dataclass
class ImageUpdater:
    client: RunnerClient
    #: The runner's catalogue (``<work dir>/images``) and where builds are kept.
    catalogue: Path
    builds: Path
    #: The recipes its images are checked against (nixfarm's own by default).
    recipes: Path = images.RECIPES
    #: For the sanity check's VM.
    vm_dir: Path = field(default_factory=lambda: Path("/var/lib/nixfarm-runner/vm"))
    state_root: Path | None = None
    #: Seconds the server may hold each call.
    wait: float = 30.0
    #: Per image, the last new build's fate when it was refused (see ``describe``).
    refused: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, str]:
        """Per installed disk image: which build it is, and a refused newer one."""
        out: dict[str, str] = {}
        if not self.catalogue.is_dir():
            return out
        for entry in images.read(self.catalogue):
            if entry.kind != "disk" or entry.disk is None or entry.alias_of:
                continue
            key = f"{entry.name} ({entry.arch})"
            job = installed_job(entry.directory)
            out[key] = (f"build of job {job[0]}, {job[1]}" if job is not None
                        else "built on this machine")
            if key in self.refused:
                out[key] += f"; {self.refused[key]}"
        return out

    async def run(self, stopping: asyncio.Event,
                  changed: Callable[[], Awaitable[None]]) -> None:
        """Ask for new builds and install them until ``stopping``; ``changed`` is
        awaited after each install or refusal (the agent offers anew)."""
        after = 0
        while not stopping.is_set():
            call = asyncio.ensure_future(self.client.image_builds(after, self.wait))
            stop = asyncio.ensure_future(stopping.wait())
            try:
                await asyncio.wait([call, stop], return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
            if not call.done():  # stopping: the server sees the hang-up
                call.cancel()
                with contextlib.suppress(asyncio.CancelledError, NixfarmError):
                    await call
                return
            try:
                found = call.result()
            except NixfarmError as e:
                log.warning("runner: cannot ask for new image builds (again in %g s): %s",
                            RETRY, e.message)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), RETRY)
                continue
            for build in found:
                after = max(after, build.job_id)
                try:
                    if await self.take(build):
                        await changed()
                except Exception:  # one bad build (or a failed call) must not stop the runner
                    log.exception("runner: taking the image build of job %d failed",
                                  build.job_id)

    async def take(self, build: ImageBuildOut) -> bool:
        """Install ``build`` if it is new to an image installed here; whether anything
        changed (installed, or refused)."""
        key = f"{build.image} ({build.arch})"
        place = self.catalogue / build.image / build.arch
        if not (place / images.DISK_FILE).is_file():
            return False  # not served here
        current = await asyncio.to_thread(installed_job, place)
        if current is not None and current[0] >= build.job_id:
            return False
        log.info("runner: image %s: new build by job %d, fetching it", key, build.job_id)
        built: Path | None = None
        try:
            recipe = await asyncio.to_thread(images.find, self.recipes, build.image, build.arch)
            built, _ = await imaging.fetch_job_build(
                build.job_id, build.finished_at, {a.name: a for a in build.artifacts},
                recipe, self.builds, self.client.download, same_recipe=True)
            await imaging.check(built / images.DISK_FILE, recipe, vm_dir=self.vm_dir,
                                state_root=self.state_root,
                                on_line=lambda line: log.info("image check %s: %s", key, line))
            installed_at = await asyncio.to_thread(
                images.install, built, recipe, self.catalogue, built.name)
        except (NixfarmError, OSError) as e:
            why = getattr(e, "message", None) or str(e)
            log.warning("runner: image %s: the build of job %d is refused, the installed "
                        "image stays: %s", key, build.job_id, why)
            self.refused[key] = f"job {build.job_id} refused: {why}"
            if built is not None:
                await asyncio.to_thread(shutil.rmtree, built, ignore_errors=True)
            return True
        self.refused.pop(key, None)
        # The catalogue holds it now (a hard link): no second copy per rebuild.
        await asyncio.to_thread(shutil.rmtree, built, ignore_errors=True)
        log.info("runner: image %s: installed the build of job %d at %s", key, build.job_id,
                 installed_at)
        return True
