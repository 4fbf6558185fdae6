"""Catalogue images through a real farm: a runner with both sandboxes gets
debian/bookworm installed while it runs, offers it (and its alias) at once, and runs a
job that installs a Debian package and adds a repository in a VM; a runner with only
bwrap never offers it; submit refuses it while no runner has it."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nixfarm.runner.workdir import runner_dir
from tests.fixtures.farm import NIXFARM, RunningFarm, free_port
from tests.fixtures.jobs import RunnerProcesses, job_logs, runnerless_env, wait_job

# Long: the first test may build the debian image (minutes) and VMs boot under TCG.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    running = RunningFarm(tmp_path_factory.mktemp("images-farm") / "data", free_port(),
                          extra_env=runnerless_env())
    running.start()
    yield running
    running.stop()


def runners_by_name(farm: RunningFarm) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in farm.get("/api/v1/runners").json()}


def wait_for(what: str, check: Any, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {seconds} s")
        time.sleep(0.3)


def submit(farm: RunningFarm, manifest: str) -> dict[str, Any]:
    r = farm.request("POST", "/api/v1/jobs", json={"manifest": manifest})
    assert r.status_code == 201, r.text
    job: dict[str, Any] = r.json()
    return job



DEBIAN_JOB = """\
image: debian/stable
packages: [hello]
repositories:
  backports: http://deb.debian.org/debian bookworm-backports main
tasks:
  - installed: |
      hello
      dpkg -s hello | grep '^Status'
  - guest: |
      echo "user=$(id -un) uid=$(id -u) shell=$(bash -c 'echo bash $BASH_VERSION')"
      cat /etc/apt/sources.list.d/backports.list
      grep -m1 -o 10.0.2.15 /proc/net/fib_trie
      sudo sh -c 'echo written > /etc/written-by-a-job'
"""


def test_debian_jobs_run_in_a_vm_on_the_runner_that_has_the_image(
    farm: RunningFarm, tmp_path: Path, debian_build: Path
) -> None:
    token = farm.cli("token", "create", "--name", "img-runners", "--scope",
                     "runner").stdout.strip()  # fmt: skip
    both_dir, bwrap_dir = tmp_path / "both", tmp_path / "bwrap"
    for logs_dir in ("both-logs", "bwrap-logs"):  # each runner's log a file of its own
        (tmp_path / logs_dir).mkdir()
    both = RunnerProcesses(tmp_path / "both-logs", both_dir)
    bwrap_only = RunnerProcesses(tmp_path / "bwrap-logs", bwrap_dir)
    both.start(farm.url, token, "both", "--sandbox", "bwrap,vm", "--no-nix-daemon")
    bwrap_only.start(farm.url, token, "bwrap-only", "--sandbox", "bwrap", "--no-nix-daemon")
    try:
        # The VM runner fetches its kernel from Debian's registry before registering.
        wait_for("two runners", lambda: {"both", "bwrap-only"} <= set(runners_by_name(farm)),
                 seconds=300)  # fmt: skip
        r = farm.request("POST", "/api/v1/jobs", json={"manifest": DEBIAN_JOB})
        assert r.status_code == 400, r.text
        assert "nixfarm image install debian/stable" in r.text, r.text

        # Installed into both catalogues while the runners run: only the one with a
        # VM offers it (and its alias), within seconds, without a restart.
        for work in (both_dir, bwrap_dir):
            subprocess.run(
                [NIXFARM, "image", "install", "debian/bookworm", "--no-check",
                 "--from", str(debian_build), "--work-dir", str(work)],
                check=True, capture_output=True, text=True, timeout=120)  # fmt: skip
        wait_for("debian/stable offered",
                 lambda: "debian/stable" in runners_by_name(farm)["both"]["images"], 60)
        runners = runners_by_name(farm)
        assert {"debian/bookworm", "demo/latest"} <= set(runners["both"]["images"])
        assert runners["both"]["sandboxes"] == ["bwrap", "vm"]
        assert runners["bwrap-only"]["sandboxes"] == ["bwrap"]
        assert not {"debian/stable", "debian/bookworm"} & set(runners["bwrap-only"]["images"])

        first = wait_job(farm, submit(farm, DEBIAN_JOB)["id"], {"success", "failed"}, 900)
        setup, (installed, guest) = job_logs(farm, first)
        assert first["status"] == "success", (setup, installed, guest)
        assert first["runner"] == "both", first
        assert "in a VM (" in setup, setup
        assert "Adding repository backports" in setup and "Installing packages: hello" in setup
        assert "Hello, world!" in installed and "install ok installed" in installed
        assert "user=build uid=1000 shell=bash 5." in guest, guest
        assert "deb http://deb.debian.org/debian bookworm-backports main" in guest
        assert "10.0.2.15" in guest, guest

        # The next job sees the image as it was: nothing of the first one persisted.
        second = submit(farm, "image: debian/bookworm\ntasks:\n  - clean: |\n"
                              "      test ! -e /etc/written-by-a-job\n"
                              "      ! command -v hello\n")  # fmt: skip
        second = wait_job(farm, second["id"], {"success", "failed"}, 600)
        assert second["status"] == "success", job_logs(farm, second)

        # A root image runs in the preferred sandbox, bwrap, on either runner.
        demo = wait_job(farm, submit(farm, "image: demo/latest\ntasks:\n  - a: hello\n")["id"],
                        {"success", "failed"}, 300)  # fmt: skip
        demo_setup, _ = job_logs(farm, demo)
        assert demo["status"] == "success" and "in a VM" not in demo_setup, demo_setup
    finally:
        both.stop()
        bwrap_only.stop()
        for work in (both_dir, bwrap_dir):  # where they worked (maybe under /var/tmp)
            shutil.rmtree(runner_dir(work), ignore_errors=True)
