"""A runner reaps what a predecessor killed with SIGKILL left (issue 12, point 7): the
sandbox's state directory, the job's directory and its cgroups are gone before the new
runner claims work (the home, with the job's secrets, is in memory: it goes with the
sandbox's processes)."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nixfarm.runner.sandbox.processes import alive, descendants
from nixfarm.runner.workdir import runner_dir
from tests.fixtures.farm import RunningFarm
from tests.security.conftest import (
    make_farm,
    start_runner,
    start_vm_runner,
    stop_runner,
    tenant,
    wait_registered,
)


@pytest.fixture(scope="module")
def lone_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningFarm, Path]]:
    """A farm with no runner: the test starts and kills its own."""
    where = tmp_path_factory.mktemp("sec-reap")
    farm = make_farm(where, network=False)
    yield farm, where
    farm.stop()


def sandbox_groups(pid: int) -> set[Path]:
    """The nixfarm-* cgroups beside the group of process ``pid`` that hold no process."""
    found: set[Path] = set()
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            if controller in ("memory", "pids", "cpu"):
                parent = Path("/sys/fs/cgroup", controller, path.lstrip("/"))
                found.update(parent.glob("nixfarm-*"))
    return found


def empty(group: Path) -> bool:
    try:
        return not (group / "cgroup.procs").read_text().strip()
    except OSError:
        return False


def test_a_runner_killed_outright_is_swept_up_by_the_next(
        lone_farm: tuple[RunningFarm, Path]) -> None:
    farm, where = lone_farm
    alice = tenant(farm, "alice")
    value = f"left-behind-{uuid.uuid4().hex}"
    secret = alice.secret(value)
    first = start_runner(farm, where)
    groups_before = sandbox_groups(first.process.pid)
    job = alice.submit({"hold": "cp ~/secret ~/kept\necho started\nsleep 600\n"},
                       f"secrets: [{secret}]\n")
    deadline = time.monotonic() + 120
    while "started" not in alice.farm.get(job["tasks"][0]["log_url"], alice.token).text:
        assert time.monotonic() < deadline, first.log.read_text()
        time.sleep(0.2)
    # The runner's sandboxes say whose they are; its home is in memory, so the secret
    # is in none of the files it left.
    owned = [p.parent for p in Path("/tmp").glob("nixfarm-sandbox-*/owner.json")
             if json.loads(p.read_text())["pid"] == first.process.pid]
    assert len(owned) == 1
    state_dir = owned[0]
    assert not [f for f in state_dir.rglob("*") if f.is_file() and value.encode() in
                f.read_bytes()]
    job_dirs = list((runner_dir(first.work_dir) / "jobs").glob(f"job-{job['id']}-*"))
    assert len(job_dirs) == 1
    groups = sandbox_groups(first.process.pid) - groups_before

    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait(10)
    time.sleep(1)  # bwrap dies with its parent; the kernel tears the namespace down
    groups = {g for g in groups if empty(g)}
    assert groups, "the sandbox had cgroups"
    assert state_dir.exists() and job_dirs[0].exists()  # what is left, until...

    second = start_runner(farm, where)
    try:
        deadline = time.monotonic() + 60
        while "registered" not in second.log.read_text():
            assert second.process.poll() is None, second.log.read_text()
            assert time.monotonic() < deadline, second.log.read_text()
            time.sleep(0.2)
        assert not state_dir.exists()
        assert not job_dirs[0].exists()
        assert not [g for g in groups if g.exists()]
    finally:
        stop_runner(second)


@pytest.mark.slow
def test_a_vm_runner_killed_outright_leaves_no_vm(lone_farm: tuple[RunningFarm, Path]) -> None:
    """The same in the VM sandbox: qemu and virtiofsd die with the runner, and the next
    runner removes the VM's state directory (its xfer copies, its console) and the job's
    directory before it claims work."""
    farm, where = lone_farm
    alice = tenant(farm, "alice-vm")
    first = start_vm_runner(farm, where)
    job = alice.submit({"hold": "echo in-the-vm > ~/kept\necho started\nsleep 600\n"})
    deadline = time.monotonic() + 300
    while "started" not in alice.farm.get(job["tasks"][0]["log_url"], alice.token).text:
        assert time.monotonic() < deadline, first.log.read_text()
        time.sleep(0.5)
    home = runner_dir(first.work_dir)
    states = list((home / "vm" / "state").glob("nixfarm-vm-*"))
    assert len(states) == 1, states
    job_dirs = list((home / "jobs").glob(f"job-{job['id']}-*"))
    assert len(job_dirs) == 1
    processes = descendants(first.process.pid)
    names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in alive(processes)}
    assert any(name.startswith("qemu") for name in names), names
    assert any("virtiofsd" in name for name in names), names

    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait(10)
    deadline = time.monotonic() + 20
    while alive(processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(processes)  # no qemu, no virtiofsd, no nix-daemon
    assert states[0].exists() and job_dirs[0].exists()  # what is left, until...

    second = start_vm_runner(farm, where)
    try:
        wait_registered(second)
        assert not states[0].exists()
        assert not job_dirs[0].exists()
    finally:
        stop_runner(second)
