"""The VM benchmark: from a job's claim to the first line of its first task.

    .venv/bin/python bench/vm_bench.py [--runs 5]

Each run is one job (``image: demo/latest``, one task ``echo first``) through the
runner's own steps (``steps.run_job``: image lookup, boot, environment, the task's
script, the task), as the agent runs it right after a claim; the clock starts when
``run_job`` is called and stops when the task's first line reaches the log. Three
sandboxes, in alternation, in the same process:

- **cold vm**: the runner's vm sandbox with no pool (``choice.choose("vm")``): qemu
  start, guest kernel, init, agent, then the steps' round trips;
- **warm vm**: the same with a pool of one VM (``vmpool``), filled before the run is
  timed (not timed: the previous job's refill); the refill after the take runs
  during the job, as it does in a runner;
- **bwrap**: the container sandbox, the floor on the same kernel.

Kernel and initramfs are made and the accelerator probed first (a runner does that
once, at start). A fourth figure is the floor of any VM on this machine now: the same
kernel and qemu machine with an initramfs of busybox alone, whose init powers off at
once (qemu start to exit): on a loaded machine it says how much of the VM's time is
ours. KVM is measured where it works; elsewhere the probe's reason is printed.

Results: a Markdown table on stdout and JSON in ``bench/out/``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio

from bench.common import Row, machine, table, write_json
from nixfarm.manifest import manifest_from_data
from nixfarm.runner.roots import Catalogue, Images
from nixfarm.runner.sandbox.choice import SandboxChoice, choose
from nixfarm.runner.sandbox.vm import VmSandbox
from nixfarm.runner.sandbox.vmpool import VmPool
from nixfarm.runner.steps import JobContext, Recorder, run_job
from nixfarm.runner.vm.accel import probe
from nixfarm.runner.vm.cpio import CpioWriter
from nixfarm.runner.vm.kernel import BUSYBOX, boot_files
from nixfarm.runner.vm.qemu import KERNEL_OPTIONS, host_tsc_khz
from nixfarm.runner.workdir import runner_dir

MANIFEST = {"image": "demo/latest", "tasks": [{"first": "echo first"}]}


async def claim_to_first_line(images: Images, choice: SandboxChoice, work: Path
                              ) -> tuple[float, str, dict[str, float]]:
    """Seconds from ``run_job`` to the task's first log line, how it booted, and when
    each phase came (a VM's: ``phases``)."""
    arrived: list[float] = []
    setup: list[tuple[float, str]] = []
    cpu: list[float] = []

    def log(task: str | None, text: str) -> None:
        if task == "first" and not arrived:
            arrived.append(time.monotonic())
            if isinstance(ctx.sandbox, VmSandbox):
                cpu.append(ctx.sandbox.cpu_seconds)
        elif task is None:
            setup.append((time.monotonic(), text))

    ctx = JobContext(manifest=manifest_from_data(MANIFEST), images=images,
                     new_sandbox=choice.new_sandbox, log=log, report=Recorder(),
                     work_dir=work, network=False)  # fmt: skip
    started = time.monotonic()
    result = await run_job(ctx)
    if result.status != "success" or not arrived:
        raise SystemExit(f"the job failed: {result}; setup log: {[t for _, t in setup]}")
    booted = next((line for _, line in setup if line.startswith("Booted")), "")
    found = phases(ctx, started, setup, arrived[0])
    if cpu:
        found["cpu:qemu+virtiofsd"] = cpu[0]
    return arrived[0] - started, booted, found


def phases(ctx: JobContext, started: float, setup: list[tuple[float, str]], first: float
           ) -> dict[str, float]:
    """Seconds from the claim to each phase of a job in a VM: on the host (``host:``,
    ``VmSandbox.phases``, from the boot's start), in the guest (``guest:``, its uptime
    at each phase of its init), and the steps (``step:``, when each logged); and
    (``cpu:``) the CPU seconds its qemu and virtiofsd had used at the first line: on a
    loaded machine wall times stretch, that much less."""
    found: dict[str, float] = {}
    sandbox = ctx.sandbox
    if isinstance(sandbox, VmSandbox):
        found.update({f"host:{k}": v for k, v in sandbox.phases.items()})
        found.update({f"guest:{k}": v for k, v in sandbox.guest_phases.items()})
    for at, text in setup:
        if text.startswith(("Booted", "Exported")):
            found[f"step:{text.split()[0].lower()}"] = at - started
    found["step:first line"] = first - started
    return found


async def bare_boot(kernel: Path, accel: str, scratch: Path) -> tuple[float, float]:
    """Seconds for qemu to boot ``kernel`` into a busybox init that powers off, and the
    CPU seconds qemu used."""
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
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    await anyio.run_process([
        "qemu-system-x86_64", "-M", f"microvm,accel={accel}", "-cpu", "max", "-m", "512",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "none",
        "-kernel", str(kernel), "-initrd", str(initrd),
        "-append", " ".join(KERNEL_OPTIONS) + f" tsc_early_khz={host_tsc_khz()} tsc=reliable"])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return time.monotonic() - started, cpu


async def main(runs: int) -> int:
    home = runner_dir(Path(tempfile.gettempdir()) / "nixfarm-vm-bench")
    images = Images(Catalogue(home / "images"))
    cold = await choose("vm", home)
    bwrap = await choose("bwrap", home)
    # As ``choose("vm", home, vm_pool=1)`` makes it, with the pool in reach.
    pool = VmPool(functools.partial(VmSandbox, vm_dir=home / "vm", state_root=home / "vm/state",
                                    accelerator=await probe()), 1)
    warm = SandboxChoice("vm", pool.new_sandbox, cold.accelerator, close=pool.close)
    boot = await boot_files(home / "vm")
    scratch = Path(tempfile.mkdtemp(prefix="nixfarm-vm-bench-"))
    figures: dict[str, list[float]] = {"cold": [], "warm": [], "bwrap": []}
    how: dict[str, list[str]] = {"cold": [], "warm": []}
    cold_phases: list[dict[str, float]] = []
    bare: list[float] = []
    bare_cpu: list[float] = []
    loads: list[float] = []
    try:
        await claim_to_first_line(images, warm, scratch)  # the image, and a first refill
        for _ in range(runs):
            loads.append(os.getloadavg()[0])
            await pool.filled()  # the pool is warm: the previous job's refill is done
            seconds, line, _ = await claim_to_first_line(images, warm, scratch)
            figures["warm"].append(seconds)
            how["warm"].append(line)
            await pool.filled()  # no boot of the pool's competes with the cold one
            seconds, line, found = await claim_to_first_line(images, cold, scratch)
            figures["cold"].append(seconds)
            how["cold"].append(line)
            cold_phases.append(found)
            figures["bwrap"].append((await claim_to_first_line(images, bwrap, scratch))[0])
            seconds, cpu = await bare_boot(boot.kernel, cold.accelerator, scratch)
            bare.append(seconds)
            bare_cpu.append(cpu)
    finally:
        await warm.aclose()
        shutil.rmtree(scratch, ignore_errors=True)
    median = {name: statistics.median(values) for name, values in figures.items()}
    accel = cold.accelerator
    rows = [
        Row(f"claim to first task line, cold vm ({accel})", "s", median["cold"],
            median["bwrap"], "bwrap", goal="< 3 s" if accel == "tcg" else "< 1 s",
            passed=median["cold"] < (3.0 if accel == "tcg" else 1.0)),
        Row(f"claim to first task line, warm vm ({accel})", "s", median["warm"],
            median["bwrap"], "bwrap", goal="< 1 s", passed=median["warm"] < 1.0),
        Row(f"claim to first task line, cold vm ({accel})", "s", median["cold"],
            statistics.median(bare), "bare kernel + busybox, to power-off"),
        Row(f"warm vm against cold vm ({accel})", "s", median["warm"], median["cold"],
            "cold vm"),
    ]
    print(f"sandbox: {cold.description}")
    if accel != "kvm":
        print("KVM: not measured, unavailable here: " + cold.description)
    print(f"{runs} runs each, in alternation, medians; load average (1 min) "
          f"{min(loads):.1f}-{max(loads):.1f}")
    print(table(rows))
    for name, values in figures.items():
        print(f"{name} runs:", [round(v, 2) for v in values])
    print("bare kernel boots:", [round(b, 2) for b in bare],
          f"(CPU seconds, median {statistics.median(bare_cpu):.2f}:",
          [round(b, 2) for b in bare_cpu], ")")
    print("cold boots:", how["cold"])
    print("warm boots:", how["warm"])
    print("cold vm phases, medians in seconds (host: from the boot's start; guest: its "
          "uptime; step: from the claim):")
    for name in dict.fromkeys(k for found in cold_phases for k in found):
        values = [found[name] for found in cold_phases if name in found]
        print(f"  {name:<18} {statistics.median(values):6.2f}  "
              f"{[round(v, 2) for v in values]}")
    path = write_json("vm", {"machine": machine(), "sandbox": cold.description,
                             "runs": figures, "booted": how, "phases": cold_phases,
                             "bare": bare, "bare_cpu": bare_cpu, "load": loads,
                             "rows": rows})  # fmt: skip
    print(f"JSON: {path}")
    return 0 if all(r.passed is not False for r in rows) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    sys.exit(asyncio.run(main(parser.parse_args().runs)))
