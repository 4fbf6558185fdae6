"""A job in a virtual machine: `nixfarm runner --sandbox vm` against a real farm."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from nixfarm.runner.workdir import runner_dir
from tests.fixtures.farm import RunningFarm, free_port
from tests.fixtures.jobs import RunnerProcesses, job_logs, runnerless_env, wait_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vm_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    running = RunningFarm(tmp_path_factory.mktemp("vm-farm") / "data", free_port(),
                          extra_env=runnerless_env())
    running.start()
    yield running
    running.stop()



def test_a_job_runs_in_a_vm_and_says_how(vm_farm: RunningFarm, tmp_path: Path) -> None:
    farm = vm_farm
    token = farm.cli("token", "create", "--name", "vm-runner", "--scope",
                     "runner").stdout.strip()
    runners = RunnerProcesses(tmp_path, tmp_path / "work")
    # With a pool of one: the job boots cold, a VM boots for the next job meanwhile,
    # and it goes when the runner stops (nothing left in vm/state, below).
    runners.start(farm.url, token, "vm-runner", "--sandbox", "vm", "--vm-pool", "1",
                  "--no-nix-daemon")
    try:
        manifest = """\
image: nix
packages: [hello]
environment:
  GREETING: hi from the manifest
tasks:
  - greet: |
      echo "$GREETING"
      hello
      echo "uid=$(id -u) home=$HOME pwd=$(pwd)"
  - fails: |
      echo before the end
      echo left by the failed task > left.txt
      exit 3
  - never: |
      echo not run
"""
        r = farm.request("POST", "/api/v1/jobs", json={"manifest": manifest})
        assert r.status_code == 201, r.text
        # The first job also waits for the runner to fetch its kernel from Debian.
        done = wait_job(farm, r.json()["id"], {"success", "failed"}, seconds=300)
        setup, (greet, fails, never) = job_logs(farm, done)
        assert done["status"] == "failed", (setup, greet, fails)
        assert [t["status"] for t in done["tasks"]] == ["success", "failed", "skipped"]
        assert "hi from the manifest" in greet and "Hello, world!" in greet
        assert "uid=1000 home=/home/build pwd=/home/build" in greet
        assert "before the end" in fails and "not run" not in never
        # The first lines say where the job ran: a VM, and its accelerator.
        assert "in a VM (tcg" in setup or "in a VM (kvm)" in setup, setup
        (runner,) = [r for r in farm.get("/api/v1/runners").json() if r["name"] == "vm-runner"]
        assert runner["sandboxes"] == ["vm"] and runner["accelerator"] in ("kvm", "tcg")
        assert runner["accelerator"] in setup
        # The failed job's VM is kept: a shell into it sees what the failed task left.
        assert done["held_until"] is not None
        assert f"nixfarm shell {done['id']} (or nixfarm ssh {done['id']}," in setup, setup
        # (Its Nix image has no sshd: nixfarm ssh says so, and names nixfarm shell.)
        ssh = farm.cli("ssh", str(done["id"]), "--", "true", check=False)
        assert ssh.returncode == 2, (ssh.stdout, ssh.stderr)
        assert "has no SSH server" in ssh.stderr and f"nixfarm shell {done['id']}" \
            in ssh.stderr, ssh.stderr
        shell = farm.cli("shell", str(done["id"]), "--", "sh", "-c",
                         "cat left.txt; id -un; exit 5", check=False)
        assert shell.returncode == 5, shell.stderr
        # (telnetd in the guest starts a session with blank lines)
        assert shell.stdout.replace("\r\n", "\n").strip("\r\n").splitlines() == [
            "left by the failed task", "build"]
    finally:
        runners.stop()
        home = runner_dir(tmp_path / "work")  # where that runner worked (maybe /var/tmp)
        leftovers = list(home.glob("vm/state/*"))
        shutil.rmtree(home, ignore_errors=True)
    assert leftovers == []
