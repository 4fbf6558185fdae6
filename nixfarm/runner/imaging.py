"""Building and checking catalogue images (``nixfarm image build | check``).

``build`` runs a recipe's ``genimg`` into a build directory named by the recipe's
hash (``nixfarm.images.recipe_hash``): an unchanged recipe is built once, a changed
one again. ``check`` boots the built disk in a VM without network, runs the image's
``sanity_check`` as the build user, then its ``poweroff_cmd``, and requires the VM to
stop. Installing is ``nixfarm.images.install`` (files only).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from nixfarm.errors import NixError
from nixfarm.images import DISK_FILE, HASH_FILE, ImageError, Recipe, recipe_hash
from nixfarm.nix import command
from nixfarm.runner.sandbox.base import DiskImage, SandboxError, SandboxSpec
from nixfarm.runner.sandbox.vm import VmSandbox
from nixfarm.runner.steps import CALL_FUNCTION, FUNCTIONS_PATH

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
