"""A runner killed with SIGKILL mid-job takes its VMs with it (the job's and the one
its pool keeps booted for the next job); the next start of a runner removes what
they left on disk."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from nixfarm.runner.sandbox.choice import choose
from nixfarm.runner.sandbox.processes import alive, descendants

pytestmark = pytest.mark.slow

RUNNER = """
import asyncio, functools, sys
from pathlib import Path
from nixfarm.runner.sandbox import SandboxSpec
from nixfarm.runner.sandbox.vm import VmSandbox
from nixfarm.runner.sandbox.vmpool import VmPool

async def main() -> None:
    vm_dir, state_root, root = map(Path, sys.argv[1:4])
    pool = VmPool(functools.partial(VmSandbox, vm_dir=vm_dir, state_root=state_root), 1)
    box = pool.new_sandbox(SandboxSpec(rootfs=root, memory_limit=384 * 1024**2))
    await box.boot()
    await box.put("/home/build/work", b"in the middle of a job")
    await pool.filled()
    print("booted", box.vm.state_dir, *(vm.state_dir for vm in pool.vms), flush=True)
    await box.run(["/bin/sh", "-c", "sleep 600"], print)

asyncio.run(main())
"""


def test_a_runner_killed_mid_job_leaves_no_vm(runner_home: Path, demo_root: Path,
                                              tmp_path: Path) -> None:
    vm_dir = runner_home / "vm"
    state_root = vm_dir / "state"
    state_root.mkdir(parents=True, exist_ok=True)
    state_root.chmod(0o755)
    errors = tmp_path / "runner.stderr"
    with errors.open("wb") as stderr:
        runner = subprocess.Popen(
            [sys.executable, "-c", RUNNER, str(vm_dir), str(state_root), str(demo_root)],
            stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        assert runner.stdout is not None
        line = runner.stdout.readline()
        assert line.startswith("booted "), errors.read_text()
        state_dirs = [Path(word) for word in line.split()[1:]]
        assert len(state_dirs) == 2, line  # the job's VM and the pool's
        time.sleep(0.5)  # the task is running
        processes = descendants(runner.pid)
        assert len(alive(processes)) >= 8  # bwraps, qemu, virtiofsd: twice
        os.kill(runner.pid, signal.SIGKILL)
        runner.wait()
        deadline = time.monotonic() + 10
        while alive(processes) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(processes)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
        if runner.stdout is not None:
            runner.stdout.close()
    assert all(d.exists() for d in state_dirs)  # the runner had no chance to clean up...
    choice = anyio.run(choose, "vm", runner_home)  # ...a runner starting does
    assert choice.kind == "vm" and choice.accelerator in ("kvm", "tcg")
    assert not any(d.exists() for d in state_dirs)
