"""`nixfarm ssh` into a held debian/bookworm VM through a real farm: the guest's sshd,
started on demand, reached over the server's relay (no port anywhere); a command's
output, and an scp of a few MB out of the guest, whole."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nixfarm.runner.workdir import runner_dir
from tests.fixtures.farm import NIXFARM, RunningFarm, free_port
from tests.fixtures.jobs import RunnerProcesses, job_logs, runnerless_env, wait_job

# Long: the image may be built first (minutes), and the VM boots under TCG.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

FAILING = """\
image: debian/bookworm
tasks:
  - fails: |
      echo "left by the failed task" > left.txt
      head -c 3000000 /dev/urandom > big.bin
      sha256sum big.bin
      exit 3
"""


def runner_log(logs: Path) -> str:
    """The runner's log's end (what a failure here is diagnosed from)."""
    log = logs / "runner-0.log"
    return log.read_text(errors="replace")[-6000:] if log.exists() else "(no runner log)"


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    running = RunningFarm(tmp_path_factory.mktemp("ssh-farm") / "data", free_port(),
                          extra_env=runnerless_env())
    running.start()
    yield running
    running.stop()


def test_ssh_and_scp_into_a_failed_jobs_vm(farm: RunningFarm, tmp_path: Path,
                                           debian_build: Path) -> None:
    token = farm.cli("token", "create", "--name", "ssh-runner", "--scope",
                     "runner").stdout.strip()
    work = tmp_path / "work"
    subprocess.run([NIXFARM, "image", "install", "debian/bookworm", "--no-check",
                    "--from", str(debian_build), "--work-dir", str(work)],
                   check=True, capture_output=True, text=True, timeout=120)
    runners = RunnerProcesses(tmp_path, work)
    runners.start(farm.url, token, "ssh-runner", "--sandbox", "vm", "--no-nix-daemon")
    env = {**os.environ, "NIXFARM_URL": farm.url, "NIXFARM_TOKEN": farm.token,
           "XDG_STATE_HOME": str(tmp_path / "state")}
    try:
        # The runner fetches its kernel from Debian's registry before it registers.
        deadline = time.monotonic() + 600
        while not any("debian/bookworm" in runner["images"]
                      for runner in farm.get("/api/v1/runners").json()):
            assert time.monotonic() < deadline, runner_log(tmp_path)
            time.sleep(1)
        r = farm.request("POST", "/api/v1/jobs", json={"manifest": FAILING})
        assert r.status_code == 201, r.text
        job = wait_job(farm, r.json()["id"], {"success", "failed"}, seconds=900)
        setup, (fails,) = job_logs(farm, job)
        assert job["status"] == "failed" and job["held_until"] is not None, (setup, fails)
        found = re.search(r"^([0-9a-f]{64})  big\.bin", fails, re.M)
        assert found, fails
        number = str(job["id"])

        # A command over ssh: its output and its exit status, as user build.
        done = subprocess.run(
            [NIXFARM, "ssh", number, "--", "cat /home/build/left.txt; id -un; exit 7"],
            env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 7, (done.stdout, done.stderr, runner_log(tmp_path))
        assert done.stdout.splitlines() == ["left by the failed task", "build"], done

        # The user's own key (--key): the runner added it to ~build/.ssh/authorized_keys.
        own = tmp_path / "own"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "own-key-1",
                        "-f", str(own)], check=True, stdin=subprocess.DEVNULL)
        mine = subprocess.run([NIXFARM, "ssh", number, "--key", str(own), "--",
                               "grep -c own-key-1 ~/.ssh/authorized_keys"],
                              env=env, capture_output=True, text=True, timeout=300)
        assert (mine.returncode, mine.stdout) == (0, "1\n"), mine

        # A pty (ssh's -tt), and a port forward: the guest reaches a server of ours.
        terminal = subprocess.run([NIXFARM, "ssh", number, "-tt", "--", "tty"], env=env,
                                  capture_output=True, text=True, timeout=300)
        assert terminal.returncode == 0 and "/dev/pts/" in terminal.stdout, terminal
        with socket.create_server(("127.0.0.1", 0)) as server:
            port = server.getsockname()[1]

            def serve() -> None:
                connection, _ = server.accept()
                with connection:
                    connection.sendall(b"forwarded through ssh\n")

            threading.Thread(target=serve, daemon=True).start()
            forward = subprocess.run(
                [NIXFARM, "ssh", number, "-o", "ExitOnForwardFailure=yes", "-R",
                 f"127.0.0.1:10022:127.0.0.1:{port}", "--",
                 "exec 3<>/dev/tcp/127.0.0.1/10022 && cat <&3"],
                env=env, capture_output=True, text=True, timeout=300)
        assert forward.stdout == "forwarded through ssh\n", (forward, runner_log(tmp_path))

        # scp with the ssh_config nixfarm ssh --config writes: the file arrives whole.
        config = subprocess.run([NIXFARM, "ssh", number, "--config"], env=env,
                                capture_output=True, text=True, timeout=60, check=True)
        copied = tmp_path / "big.bin"
        scp = subprocess.run(
            ["scp", "-F", config.stdout.strip(), f"nixfarm-job-{number}:big.bin",
             str(copied)], env=env, capture_output=True, text=True, timeout=600)
        assert scp.returncode == 0, (scp.stdout, scp.stderr, runner_log(tmp_path))
        assert copied.stat().st_size == 3000000
        assert hashlib.sha256(copied.read_bytes()).hexdigest() == found.group(1)
        # The host key was the sandbox's, pinned under the job's alias.
        known = (Path(config.stdout.strip()).parent / "known_hosts").read_text()
        assert known.startswith(f"nixfarm-job-{number} ssh-ed25519 "), known
        # The SSH sessions did not end the hold (ssh tools connect again and again).
        assert farm.get(f"/api/v1/jobs/{number}").json()["held_until"] is not None
    finally:
        runners.stop()
        shutil.rmtree(runner_dir(work), ignore_errors=True)
