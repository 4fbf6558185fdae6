"""Which sandbox a runner gives its jobs, made ready once when the runner starts.

``bwrap`` needs nothing ahead. ``vm`` probes the accelerator (``vm.accel``), fetches
the kernel and makes the initramfs (``vm.kernel``), and removes what VMs of a
runner killed earlier left behind, all before the first claim, so that a job's
boot pays none of it and a runner that cannot run VMs says so at once.

A runner may have several kinds (``--sandbox vm,bwrap``): ``choose_kinds`` gives a
factory that runs a disk image in a VM and any other image in the first kind named
(the preferred one).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from nixfarm.runner.sandbox.base import DiskImage, Sandbox, SandboxError, SandboxSpec
from nixfarm.runner.sandbox.bwrap import BwrapSandbox

SandboxKind = Literal["bwrap", "vm"]
KINDS: tuple[SandboxKind, ...] = ("bwrap", "vm")
log = logging.getLogger("nixfarm.runner")


@dataclass(frozen=True)
class SandboxChoice:
    kind: SandboxKind
    new_sandbox: Callable[[SandboxSpec], Sandbox]
    #: "kvm" or "tcg" for VMs; "" for bwrap.
    accelerator: str = ""
    #: One line for logs: "vm (tcg (software emulation: ...))".
    description: str = "bwrap"
    #: Every kind this choice makes, the preferred first (one, unless ``choose_kinds``).
    kinds: tuple[str, ...] = ()
    #: Shuts down what the sandboxes keep between jobs (a VM pool); call it when the
    #: runner stops.
    close: Callable[[], Awaitable[None]] | None = None

    async def aclose(self) -> None:
        if self.close is not None:
            await self.close()

    def __post_init__(self) -> None:
        if not self.kinds:
            object.__setattr__(self, "kinds", (self.kind,))


def parse_kinds(text: str) -> tuple[SandboxKind, ...]:
    """``vm,bwrap`` -> ("vm", "bwrap"); SandboxError naming a kind that is none."""
    kinds: list[SandboxKind] = []
    for word in (w.strip() for w in text.split(",") if w.strip()):
        kind = next((k for k in KINDS if k == word), None)
        if kind is not None:
            if kind not in kinds:
                kinds.append(kind)
        else:
            raise SandboxError(f"There is no sandbox {word!r}: choose among "
                               f"{', '.join(KINDS)} (comma-separated, preferred first).")
    if not kinds:
        raise SandboxError(f"Name a sandbox: one or more of {', '.join(KINDS)}.")
    return tuple(kinds)


async def choose_kinds(text: str, home: Path, *, vm_pool: int = 0,
                       vm_pool_memory: int | None = None) -> SandboxChoice:
    """Sandboxes of every kind in ``text`` (``vm,bwrap``), made ready; see ``combine``."""
    kinds = parse_kinds(text)
    return combine([await choose(kind, home, vm_pool=vm_pool, vm_pool_memory=vm_pool_memory)
                    for kind in kinds])


def combine(choices: Sequence[SandboxChoice]) -> SandboxChoice:
    """One choice of several kinds, the first preferred: a disk image goes to a VM
    whatever the order; any other image (a Nix image with Nix too: both kinds give
    it its own proxy, ``vm.nixguest``) to the preferred kind."""
    if len(choices) == 1:
        return choices[0]
    by_kind = {c.kind: c for c in choices}
    preferred = choices[0]

    def new_sandbox(spec: SandboxSpec) -> Sandbox:
        if isinstance(spec.image, DiskImage) and "vm" in by_kind:
            return by_kind["vm"].new_sandbox(spec)
        return preferred.new_sandbox(spec)

    vm = by_kind.get("vm")
    return SandboxChoice(
        preferred.kind, new_sandbox, vm.accelerator if vm else "",
        ", ".join(c.description for c in choices), tuple(c.kind for c in choices),
        vm.close if vm else None)


async def choose(kind: str, home: Path, *, vm_pool: int = 0,
                 vm_pool_memory: int | None = None) -> SandboxChoice:
    """Make sandboxes of ``kind`` ready under the runner directory ``home``.

    ``vm_pool``: VMs kept booted for the next jobs (``vmpool``; 0: none), their guest
    RAM at most ``vm_pool_memory`` bytes together. Raises SandboxError naming what is
    missing (an unknown kind, no kernel, ...).
    """
    if kind == "bwrap":
        return SandboxChoice("bwrap", BwrapSandbox)
    if kind != "vm":
        raise SandboxError(f"There is no sandbox {kind!r}: choose one of {', '.join(KINDS)}.")
    from nixfarm.runner.sandbox.vm import VmSandbox, reap
    from nixfarm.runner.vm.accel import probe
    from nixfarm.runner.vm.kernel import KernelError, boot_files

    vm_dir = home / "vm"
    state_root = vm_dir / "state"
    await asyncio.to_thread(state_root.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(state_root.chmod, 0o755)
    for leftover in await asyncio.to_thread(reap, state_root):
        log.warning("removed %s, left by a VM of a runner that died", leftover)
    accel = await probe()
    try:
        boot = await boot_files(vm_dir)
    except KernelError as e:
        raise SandboxError(f"The vm sandbox has no guest kernel: {e.message}") from e
    description = f"vm ({accel.describe()}; kernel {boot.version})"
    factory = functools.partial(VmSandbox, vm_dir=vm_dir, state_root=state_root,
                                accelerator=accel)  # fmt: skip
    if vm_pool <= 0:
        log.info("runner sandboxes: %s", description)
        return SandboxChoice("vm", factory, accel.name, description)
    from nixfarm.runner.sandbox.vmpool import VmPool

    pool = VmPool(factory, vm_pool, vm_pool_memory)
    description += f", a pool of {vm_pool} booted VM(s)"
    log.info("runner sandboxes: %s", description)
    return SandboxChoice("vm", pool.new_sandbox, accel.name, description, close=pool.close)
