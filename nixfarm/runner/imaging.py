"""Building and checking catalogue images (``nixfarm image build | check``).

``build`` runs a recipe's ``genimg`` into a build directory named by the recipe's
hash (``nixfarm.images.recipe_hash``): an unchanged recipe is built once, a changed
one again. ``check`` boots the built disk in a VM without network, runs the image's
``sanity_check`` as the build user, then its ``poweroff_cmd``, and requires the VM to
stop. Installing is ``nixfarm.images.install`` (files only).

``fetch_job_build`` takes the image a job built (its artifacts ``root.img.qcow2`` and
``recipe.sha256``, docs/images.md) into a build directory: for ``nixfarm image install
--from-job`` and for a runner installing a scheduled build itself (``imageupdates``).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from pathlib import Path

from nixfarm.errors import NixError
from nixfarm.images import (
    BUILD_JOB_FILE,
    DISK_FILE,
    HASH_FILE,
    ImageError,
    Recipe,
    recipe_hash,
)
from nixfarm.nix import command
from nixfarm.runner.sandbox.base import DiskImage, SandboxError, SandboxSpec
from nixfarm.runner.sandbox.vm import VmSandbox
from nixfarm.runner.steps import CALL_FUNCTION, FUNCTIONS_PATH
from nixfarm.wire.jobs import ArtifactOut

#: genimg of a disk image: debootstrap and friends take minutes.
BUILD_TIMEOUT = 3600.0
#: Seconds for the sanity check's boot, check and power-off under TCG on a busy host.
CHECK_TIMEOUT = 600.0


def build_dir(recipe: Recipe, builds: Path) -> Path:
    """Where ``recipe`` is (or will be) built under ``builds``."""
    return builds / recipe.build_name(recipe_hash(recipe))


async def build(
    recipe: Recipe,
    builds: Path,
    *,
    on_line: Callable[[str], None] | None = None,
    timeout: float = BUILD_TIMEOUT,  # noqa: ASYNC109 - genimg's, which it must stop
) -> Path:
    """Build ``recipe`` under ``builds`` (unless built already); return its directory,
    which holds ``root.img.qcow2`` and ``recipe.sha256``."""
    if recipe.kind != "disk":
        raise ImageError(f"{recipe.name} is a root image: a runner builds it on first use.")
    genimg = recipe.genimg
    if genimg is None:
        raise ImageError(f"{recipe.name} has no genimg.")
    digest = recipe_hash(recipe)
    out = builds / recipe.build_name(digest)
    if (out / DISK_FILE).is_file():
        return out
    await asyncio.to_thread(builds.mkdir, parents=True, exist_ok=True)
    # Two builds of one recipe at once (two test runs, two operators): one builds,
    # the other waits for it and takes its result.
    lock = await asyncio.to_thread(
        os.open, builds / f".{out.name}.lock", os.O_RDWR | os.O_CREAT, 0o644
    )
    try:
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        if (out / DISK_FILE).is_file():
            return out
        return await _build(recipe, genimg, out, digest, on_line, timeout)
    finally:
        os.close(lock)


async def _build(
    recipe: Recipe,
    genimg: Path,
    out: Path,
    digest: str,
    on_line: Callable[[str], None] | None,
    timeout: float,  # noqa: ASYNC109
) -> Path:
    await asyncio.to_thread(shutil.rmtree, out, ignore_errors=True)
    try:
        await command.run(recipe.genimg_argv(genimg, out), timeout=timeout, on_line=on_line)
    except NixError as e:  # command.run's error: the genimg's exit and last lines
        raise ImageError(f"Building {recipe.name} failed: {e.message}") from e
    if not (out / DISK_FILE).is_file():
        raise ImageError(f"{genimg} made no {out / DISK_FILE}.")
    await asyncio.to_thread(_finish, out, digest)
    return out


def _finish(out: Path, digest: str) -> None:
    (out / HASH_FILE).write_text(digest + "\n")
    out.chmod(0o755)  # qemu, as an unprivileged user, opens it through the runner


async def check(
    disk: Path,
    recipe: Recipe,
    *,
    vm_dir: Path,
    state_root: Path | None = None,
    on_line: Callable[[str], None] = print,
    timeout: float = CHECK_TIMEOUT,  # noqa: ASYNC109 - the VM must be stopped too
) -> None:
    """Boot ``disk``, run the image's ``sanity_check`` and ``poweroff_cmd``; raise
    ImageError saying what failed."""
    functions = recipe.functions
    if functions is None:
        raise ImageError(f"{recipe.name} has no functions file.")
    spec = SandboxSpec(DiskImage(disk, "qcow2"), memory_limit=1024**3)
    try:
        async with (
            asyncio.timeout(timeout),
            VmSandbox(spec, vm_dir=vm_dir, state_root=state_root) as vm,
        ):
            on_line(f"booted {recipe.name} in {vm.description}")
            await vm.put(FUNCTIONS_PATH, functions.read_bytes())
            status = await vm.run(
                ["/bin/sh", "-c", CALL_FUNCTION, FUNCTIONS_PATH, "sanity_check"], on_line)
            if status != 0:
                raise ImageError(f"The sanity check of {recipe.name} failed (exit {status}).")
            await _power_off(vm, recipe, on_line)
    except TimeoutError:
        raise ImageError(f"Checking {recipe.name} took more than {timeout:g} s.") from None
    except SandboxError as e:
        raise ImageError(f"Checking {recipe.name}: {e.message}") from e


async def _power_off(vm: VmSandbox, recipe: Recipe, on_line: Callable[[str], None]) -> None:
    """Run ``poweroff_cmd``: the VM must stop (its agent's channel closes)."""
    try:
        status = await vm.run(
            ["/bin/sh", "-c", '. "$0" && [ -n "$poweroff_cmd" ] && eval "$poweroff_cmd"',
             FUNCTIONS_PATH], on_line, timeout=120.0)  # fmt: skip
    except SandboxError as e:
        if "the VM stopped" in e.message:
            on_line(f"{recipe.name} powered off")
            return
        raise
    raise ImageError(f"poweroff_cmd of {recipe.name} returned {status} and the VM runs on.")


#: Downloads an artifact (its URL) into a file; returns the bytes written.
Download = Callable[[str, Path], Awaitable[int]]


async def fetch_job_build(
    job_id: int,
    finished_at: datetime | None,
    artifacts: Mapping[str, ArtifactOut],
    recipe: Recipe,
    builds: Path,
    download: Download,
    *,
    same_recipe: bool,
) -> tuple[Path, str]:
    """Download the image job ``job_id`` built (``artifacts`` by name) into a build
    directory under ``builds``, named by its recipe hash and its job; return it and the
    recipe hash the job built. A build already there is not fetched again.

    Checked: both artifacts are there; ``recipe.sha256`` is a recipe hash (and, with
    ``same_recipe``, this machine's recipe's); each file has the size, and the SHA-256
    the server took at upload (when it has one). ImageError says what failed."""
    missing = [name for name in (DISK_FILE, HASH_FILE) if name not in artifacts]
    if missing:
        raise ImageError(f"Job {job_id} has no artifact {' or '.join(missing)}: it did not "
                         f"build an image (see its distro's build.yml).")
    await asyncio.to_thread(builds.mkdir, parents=True, exist_ok=True)
    staging = Path(await asyncio.to_thread(
        tempfile.mkdtemp, prefix=f".job-{job_id}-", dir=builds))
    try:
        await _download_checked(job_id, artifacts[HASH_FILE], staging / HASH_FILE, download)
        digest = (staging / HASH_FILE).read_text().strip()
        if not re.fullmatch(r"[0-9a-f]{32}", digest):
            raise ImageError(f"Job {job_id}'s {HASH_FILE} is not a recipe hash.")
        mine = recipe_hash(recipe)
        if same_recipe and digest != mine:
            raise ImageError(f"Job {job_id} built {recipe.name} from another recipe ({digest}) "
                             f"than this runner's ({mine}).")
        target = builds / f"{recipe.build_name(digest)}-job{job_id}"
        if not (target / DISK_FILE).is_file():
            await _download_checked(job_id, artifacts[DISK_FILE], staging / DISK_FILE,
                                     download)
            stamp = f"{job_id} {finished_at.isoformat() if finished_at else ''}".strip()
            await asyncio.to_thread(_place, staging, target, stamp)
    finally:
        await asyncio.to_thread(shutil.rmtree, staging, ignore_errors=True)
    return target, digest


async def _download_checked(job_id: int, artifact: ArtifactOut, dest: Path,
                            download: Download) -> None:
    size = await download(artifact.url, dest)
    if size != artifact.size:
        raise ImageError(f"{artifact.name} of job {job_id} came short: {size} of "
                         f"{artifact.size} bytes.")
    if artifact.sha256 is not None:
        got = await asyncio.to_thread(_sha256, dest)
        if got != artifact.sha256:
            raise ImageError(f"{artifact.name} of job {job_id} is corrupt: its SHA-256 is "
                             f"{got}, the server took {artifact.sha256} at upload.")


def _place(staging: Path, target: Path, stamp: str) -> None:
    (staging / BUILD_JOB_FILE).write_text(stamp + "\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.chmod(0o755)  # qemu, as an unprivileged user, opens the image in it
    staging.rename(target)


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
