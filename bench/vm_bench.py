"""The VM benchmark: from "start a sandbox" to the first line of a task.

    .venv/bin/python bench/vm_bench.py [--runs 5]

Each run starts a sandbox on the demo catalogue image, runs ``echo first`` in it and
stops the clock when that line arrives; then it shuts the sandbox down. The vm
sandbox (``nixfarm.runner.sandbox.vm``: qemu microvm, our initramfs, the guest agent)
and the bwrap sandbox (its baseline, the floor of a container on the same kernel)
are measured in alternation, ``--runs`` times each, in the same process. The kernel
and initramfs are made first (not timed: a runner makes them once, at start), so
the VM figure is a cold boot of a new VM: qemu start, guest kernel, init, agent.
The accelerator is the runner's (``vm.accel``); under TCG the goal is < 3 s.

A third figure, the floor of any VM on this machine now: the same kernel and qemu
machine with an initramfs of busybox alone, whose init powers off at once (qemu
start to exit). On a loaded machine it says how much of the VM's time is ours.

Results: a Markdown table on stdout and JSON in ``bench/out/``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio

from bench.common import Row, machine, table, write_json
from nixfarm.runner.roots import Catalogue
from nixfarm.runner.sandbox import BwrapSandbox, Sandbox, SandboxSpec
from nixfarm.runner.sandbox.vm import VmSandbox
from nixfarm.runner.vm.accel import probe
from nixfarm.runner.vm.cpio import CpioWriter
from nixfarm.runner.vm.kernel import BUSYBOX, boot_files
from nixfarm.runner.vm.qemu import KERNEL_OPTIONS, host_tsc_khz
from nixfarm.runner.workdir import runner_dir


async def first_line(box: Sandbox, guest: list[float]) -> tuple[float, float]:
    """Seconds to boot ``box``, and from the start to ``echo first``'s line."""
    started = time.monotonic()
    arrived: list[float] = []
    try:
        await box.boot()
        booted = time.monotonic() - started
        if isinstance(box, VmSandbox):
            guest.append(round(box.guest_seconds, 2))
        await box.run(["/bin/sh", "-c", "echo first"], lambda _: arrived.append(time.monotonic()))
    finally:
        await box.shutdown()
    return booted, arrived[0] - started


async def bare_boot(kernel: Path, accel: str, scratch: Path) -> float:
    """Seconds for qemu to boot ``kernel`` into a busybox init that powers off."""
    initrd = scratch / "bare.cpio"
    if not initrd.exists():
        with initrd.open("wb") as out:
            archive = CpioWriter(out)
            archive.directory("bin")
            archive.directory("dev")
            archive.char_device("dev/console", 5, 1)
            archive.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
            archive.file("init", b"#!/bin/busybox sh\n/bin/busybox poweroff -f\n", 0o755)
            archive.close()
    started = time.monotonic()
    await anyio.run_process([
        "qemu-system-x86_64", "-M", f"microvm,accel={accel}", "-cpu", "max", "-m", "512",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "none",
        "-kernel", str(kernel), "-initrd", str(initrd),
        "-append", " ".join(KERNEL_OPTIONS) + f" tsc_early_khz={host_tsc_khz()} tsc=reliable"])
    return time.monotonic() - started


async def main(runs: int) -> int:
    home = runner_dir(Path(tempfile.gettempdir()) / "nixfarm-vm-bench")
    catalogue = Catalogue(home / "images")
    root = await catalogue.root(catalogue.find("demo/latest"))
    spec = SandboxSpec(rootfs=root, memory_limit=512 * 1024**2)
    accel_started = time.monotonic()
    accel = await probe(fresh=True)
    accel_seconds = time.monotonic() - accel_started
    boot = await boot_files(home / "vm")
    scratch = Path(tempfile.mkdtemp(prefix="nixfarm-vm-bench-"))
    vm: list[tuple[float, float]] = []
    bwrap: list[tuple[float, float]] = []
    guest: list[float] = []
    bare: list[float] = []
    for _ in range(runs):
        bare.append(await bare_boot(boot.kernel, accel.name, scratch))
        vm.append(await first_line(VmSandbox(spec, vm_dir=home / "vm", accelerator=accel), guest))
        bwrap.append(await first_line(BwrapSandbox(spec), guest))
    vm_first = statistics.median(t for _, t in vm)
    bwrap_first = statistics.median(t for _, t in bwrap)
    goal = 3.0 if accel.name == "tcg" else 1.0
    rows = [
        Row(f"start to first task line ({accel.name})", "s", vm_first, bwrap_first, "bwrap",
            goal=f"< {goal:g} s", passed=vm_first < goal),
        Row(f"boot to agent ready ({accel.name})", "s", statistics.median(b for b, _ in vm),
            statistics.median(b for b, _ in bwrap), "bwrap"),
        Row(f"boot to agent ready ({accel.name})", "s", statistics.median(b for b, _ in vm),
            statistics.median(bare), "bare kernel + busybox, to power-off"),
        Row("accelerator probe", "s", accel_seconds, None, "", goal="< 1 s",
            passed=accel_seconds < 1.0),
    ]
    print(f"accelerator: {accel.describe()}; {runs} runs each, medians")
    print(table(rows))
    print("vm runs (boot, first line):", [(round(b, 2), round(f, 2)) for b, f in vm])
    print("guest uptime at ready:", guest)
    print("bare kernel boots:", [round(b, 2) for b in bare])
    print("bwrap runs (boot, first line):", [(round(b, 3), round(f, 3)) for b, f in bwrap])
    path = write_json("vm", {"machine": machine(), "accelerator": accel.describe(),
                             "vm": vm, "bwrap": bwrap, "guest_uptime_at_ready": guest, "bare": bare,
                             "rows": rows})  # fmt: skip
    print(f"JSON: {path}")
    shutil.rmtree(scratch, ignore_errors=True)
    return 0 if all(r.passed is not False for r in rows) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    sys.exit(asyncio.run(main(parser.parse_args().runs)))
