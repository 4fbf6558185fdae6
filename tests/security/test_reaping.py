"""A runner reaps what a predecessor killed with SIGKILL left (issue 12, point 7): the
sandbox's home (the job's secrets in it), the job's directory and its cgroups are
gone before the new runner claims work."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nixfarm.runner.workdir import runner_dir
from tests.fixtures.farm import RunningFarm
from tests.security.conftest import make_farm, start_runner, stop_runner, tenant


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
    homes = [p.parent for p in Path("/tmp").glob("nixfarm-sandbox-*/home/kept")
             if p.read_text() == value]
    assert len(homes) == 1
    state_dir = homes[0].parent
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
