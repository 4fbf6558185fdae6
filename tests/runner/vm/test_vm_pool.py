"""The warm VM pool (``sandbox.vmpool``) against real qemu: a job that finds a VM
booted for its spec starts on it at once, gets its own environment and deadline, and
the VM is never used twice; a job with another spec never gets it."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import pytest

from nixfarm.runner.sandbox import SandboxSpec
from nixfarm.runner.sandbox.base import NixClient, RootDir
from nixfarm.runner.sandbox.processes import alive, descendants
from nixfarm.runner.sandbox.vm import VmSandbox
from nixfarm.runner.sandbox.vmpool import NICE, PooledVm, VmPool, pool_key

pytestmark = pytest.mark.anyio


async def lines_of(box: PooledVm, script: str) -> list[str]:
    lines: list[str] = []
    status = await box.run(["/bin/sh", "-c", script], lines.append)
    assert status == 0, lines
    return lines


def test_a_vm_matches_only_the_spec_it_was_booted_for() -> None:
    base = SandboxSpec(RootDir(Path("/images/a")), memory_limit=512 * 1024**2)
    same = SandboxSpec(RootDir(Path("/images/a")), memory_limit=512 * 1024**2,
                       environment={"JOB_ID": "7"}, timeout=60.0)
    assert pool_key(base) == pool_key(same)  # per command / from hand-over: may differ
    for other in (
        SandboxSpec(RootDir(Path("/images/a")), memory_limit=512 * 1024**2, network=True),
        SandboxSpec(RootDir(Path("/images/b")), memory_limit=512 * 1024**2),
        SandboxSpec(RootDir(Path("/images/a")), memory_limit=1024**3),
        SandboxSpec(RootDir(Path("/images/a")), memory_limit=512 * 1024**2, cpu_limit=2),
        SandboxSpec(RootDir(Path("/images/a")), memory_limit=512 * 1024**2, tmp_size=1024),
    ):
        assert pool_key(other) != pool_key(base), other
    nix = SandboxSpec(RootDir(Path("/images/a")), nix_client=NixClient(Path("/s")))
    assert pool_key(nix) is None  # its Nix proxy is the job's own: never pooled


@pytest.mark.slow
async def test_the_next_job_starts_on_a_warm_vm_used_once(
        demo_root: Path, vm_dir: Path, state_root: Path) -> None:
    pool = VmPool(functools.partial(VmSandbox, vm_dir=vm_dir, state_root=state_root), 1)
    spec = SandboxSpec(rootfs=demo_root, memory_limit=384 * 1024**2,
                       environment={"WHO": "first"})
    try:
        first = pool.new_sandbox(spec)
        async with first:
            assert first.waited is None  # nothing was booted yet: a cold boot
            await lines_of(first, "echo used > /tmp/mark")
            first_dir = first.vm.state_dir
        # The replacement boots once the first job's boot is done, not during it.
        assert pool.idle == 1
        await pool.filled()
        idle = pool.vms[0]
        assert idle.usable() and idle.state_dir != first_dir
        processes = set().union(*(descendants(p) | {p} for p in _pids(idle)))
        # Booted at a low priority, not to slow the jobs running...
        assert {_nice(pid) for pid in processes} == {NICE}, processes

        second = pool.new_sandbox(SandboxSpec(
            rootfs=demo_root, memory_limit=384 * 1024**2, environment={"WHO": "second"},
            timeout=600.0))
        started = time.monotonic()
        await second.boot()
        took = time.monotonic() - started
        async with second:
            assert second.vm is idle and second.waited is not None
            assert took < min(1.0, idle.boot_seconds / 2), (took, idle.boot_seconds)
            assert "warm from the pool" in second.description
            if os.geteuid() == 0:  # ...and the job's own from when it takes it
                assert {_nice(pid) for pid in alive(processes)} == {0}
            # The job's own environment, in a VM no job used, whose warm-up left nothing.
            assert await lines_of(second, 'echo "$WHO"; ls -A /tmp') == ["second"]
            assert idle._deadline is not None  # the job's timeout runs from hand-over
            assert pool.vms and pool.vms[0] is not idle  # replaced in the background
        assert not alive(processes)  # destroyed with its job, never returned
        assert idle.state_dir is not None and not idle.state_dir.exists()
        assert pool.vms[0] is not idle
    finally:
        left = pool.vms
        await pool.close()
    assert pool.idle == 0 and all(not vm.usable() for vm in left)
    assert all(vm.state_dir is None or not vm.state_dir.exists() for vm in left)


def _pids(vm: VmSandbox) -> list[int]:
    return [p.pid for p in vm._processes]


def _nice(pid: int) -> int:
    """A process's niceness (its main thread's), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[16])
