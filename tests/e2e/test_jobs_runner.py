"""Jobs run by the real runner agent (`nixfarm runner`) in real bubblewrap sandboxes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest

import nixfarm.demo
from nixfarm.runner.agent import INTERRUPTED_LINE
from tests.fixtures.farm import RunningFarm, free_port
from tests.fixtures.jobs import Follower, Received, RunnerProcesses, runnerless_env, wait_job
from tests.fixtures.nixenv import Nix
from tests.fixtures.processes import running

LEASE = 3.0
SECRET = "correct-horse-battery-staple-42"


@pytest.fixture(scope="module")
def runner_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    running = RunningFarm(tmp_path_factory.mktemp("runner-farm") / "data", free_port(),
                          extra_env=runnerless_env(NIXFARM_JOBS__LEASE_SECONDS=str(LEASE)))
    running.start()
    yield running
    running.stop()


class StartRunner(Protocol):
    def __call__(self, *extra: str) -> subprocess.Popen[bytes]: ...


@pytest.fixture
def start_runner(runner_farm: RunningFarm, tmp_path: Path) -> Iterator[StartRunner]:
    """Starts `nixfarm runner` processes (the way an operator does); stops them after."""
    token = runner_farm.cli("token", "create", "--name", "runner", "--scope",
                            "runner").stdout.strip()
    runners = RunnerProcesses(tmp_path, tmp_path / "work")

    def start(*extra: str) -> subprocess.Popen[bytes]:
        return runners.start(runner_farm.url, token, f"test-{len(runners.started)}", *extra)

    yield start
    runners.stop()


def submit(farm: RunningFarm, manifest: str) -> dict[str, Any]:
    r = farm.request("POST", "/api/v1/jobs", json={"manifest": manifest})
    assert r.status_code == 201, r.text
    job: dict[str, Any] = r.json()
    return job


def wait_started(farm: RunningFarm, job: dict[str, Any]) -> None:
    """Until the job's first task has printed "started"."""
    wait_job(farm, job["id"], {"running"})
    deadline = time.monotonic() + 30
    while "started" not in farm.get(job["tasks"][0]["log_url"]).text:
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.1)


def all_logs(farm: RunningFarm, job: dict[str, Any]) -> str:
    urls = [job["setup_log_url"], *(t["log_url"] for t in job["tasks"])]
    return "".join(farm.get(url).text for url in urls)


def test_a_manifest_runs_end_to_end_in_a_sandbox(
        runner_farm: RunningFarm, start_runner: StartRunner,
        webhooks: tuple[str, Received]) -> None:
    farm = runner_farm
    hook_url, received = webhooks
    start_runner()
    secret_name = f"token-{uuid.uuid4().hex[:8]}"
    r = farm.request("POST", "/api/v1/secrets", json={
        "name": secret_name, "kind": "file", "path": "~/.config/token", "mode": 0o600,
        "data": base64.b64encode(SECRET.encode()).decode()})
    assert r.status_code == 201, r.text
    manifest = f"""\
image: nix
packages: [hello, coreutils]
environment:
  GREETING: hi from the manifest
  COUNT: 3
secrets:
  - {secret_name}
tasks:
  - greet: |
      echo "$GREETING"
      hello
  - use-secret: |
      test "$(cat ~/.config/token)" = "{SECRET}"
      stat -c %a ~/.config/token
      cat ~/.config/token
  - report: |
      mkdir -p out
      echo "count=$COUNT user=$(id -u) job=$JOB_ID" > out/report.txt
artifacts:
  - out/report.txt
triggers:
  - action: webhook
    condition: always
    url: {hook_url}/hook
"""
    job = submit(farm, manifest)
    follower = Follower(farm, f"/api/v1/jobs/{job['id']}/events")
    follower.start()
    done = wait_job(farm, job["id"], {"success", "failed"})
    assert done["status"] == "success", all_logs(farm, done)
    assert [t["status"] for t in done["tasks"]] == ["success"] * 3

    logs = all_logs(farm, done)
    assert "hi from the manifest" in logs and "Hello, world!" in logs
    assert "600" in logs
    assert SECRET not in logs
    follower.join(10)
    assert any("Hello, world!" in d["text"] for _, d in follower.logs())
    assert not any(SECRET in d["text"] for _, d in follower.logs())

    (artifact,) = done["artifacts"]
    body = farm.get(artifact["url"]).text
    assert body == f"count=3 user=1000 job={job['id']}\n"

    assert received.event.wait(10)
    headers, payload = next((h, b) for h, b in received.bodies
                            if json.loads(b)["id"] == job["id"])
    key = bytes.fromhex(farm.get("/api/v1/webhook-key").json()["key"])
    expected = base64.b64encode(hmac.new(
        key, payload + headers["x-payload-nonce"].encode(), hashlib.sha256).digest())
    assert headers["x-payload-signature"] == expected.decode()
    assert json.loads(payload)["status"] == "success"
    assert SECRET.encode() not in payload


def test_sandboxed_tasks_cannot_reach_the_host(runner_farm: RunningFarm,
                                              start_runner: StartRunner) -> None:
    start_runner()
    marker = Path(f"/tmp/nixfarm-host-{uuid.uuid4().hex}")
    marker.write_text("host secret\n")
    probes = {
        "read-host-file": f"cat {marker}",
        "read-shadow": "cat /etc/shadow",
        "see-host-processes":
            "test $(ps -o pid= | wc -l) -lt 10 && ! ps -o args= | grep -q '[g]ranian'",
        "write-store": "touch /nix/store/evil",
        "write-root": "touch /evil",
    }
    expected = {"see-host-processes": "success"}
    try:
        for name, script in probes.items():
            job = submit(runner_farm, f"image: nix\npackages: [coreutils]\ntasks:\n"
                                      f"  - {name}: |\n      {script}\n")
            done = wait_job(runner_farm, job["id"], {"success", "failed"})
            assert done["status"] == expected.get(name, "failed"), (name, all_logs(
                runner_farm, done))
        assert marker.read_text() == "host secret\n"
        assert not Path("/nix/store/evil").exists() and not Path("/evil").exists()
    finally:
        marker.unlink()


def test_cancel_kills_the_running_job(runner_farm: RunningFarm,
                                      start_runner: StartRunner) -> None:
    start_runner()
    tag = str(900000 + int(uuid.uuid4().int % 90000))
    job = submit(runner_farm, f"image: nix\npackages: [coreutils]\ntasks:\n"
                              f"  - wait: |\n      echo started\n      sleep {tag}\n")
    wait_started(runner_farm, job)
    asked = time.monotonic()
    assert runner_farm.request("POST", f"/api/v1/jobs/{job['id']}/cancel").status_code == 200
    done = wait_job(runner_farm, job["id"], {"cancelled"}, 10)
    assert done["status"] == "cancelled"
    while running(f"sleep {tag}"):
        assert time.monotonic() - asked < 2.0, "the job's processes outlived the cancel"
        time.sleep(0.05)


def test_a_killed_runner_loses_its_job_and_another_takes_the_next(
        runner_farm: RunningFarm, start_runner: StartRunner) -> None:
    first = start_runner()
    tag = str(800000 + int(uuid.uuid4().int % 90000))
    job = submit(runner_farm, f"image: nix\npackages: [coreutils]\ntasks:\n"
                              f"  - wait: |\n      echo started\n      sleep {tag}\n")
    wait_started(runner_farm, job)
    os.killpg(first.pid, signal.SIGKILL)
    killed = time.monotonic()
    lost = wait_job(runner_farm, job["id"], {"failed"}, LEASE + 10)
    assert time.monotonic() - killed < LEASE + 3
    assert lost["reason"] == "runner lost"
    # --die-with-parent: the sandbox went with its runner.
    assert not running(f"sleep {tag}")

    start_runner()
    job = submit(runner_farm, "image: nix\npackages: [hello]\ntasks:\n  - hi: hello\n")
    done = wait_job(runner_farm, job["id"], {"success", "failed"})
    assert done["status"] == "success"
    assert done["runner"] != lost["runner"]
    with httpx.Client() as c:
        assert "Hello, world!" in c.get(done["tasks"][0]["log_url"], headers={
            "Authorization": f"Bearer {runner_farm.token}"}).text


def test_a_stopped_runner_interrupts_its_job_which_runs_again_on_another(
        runner_farm: RunningFarm, start_runner: StartRunner) -> None:
    first = start_runner("--shutdown-grace", "1")
    tag = str(700000 + int(uuid.uuid4().int % 90000))
    job = submit(runner_farm, f"image: nix\npackages: [coreutils]\ntasks:\n"
                              f"  - wait: |\n      echo started\n      sleep {tag}\n")
    wait_started(runner_farm, job)
    stopped = time.monotonic()
    first.send_signal(signal.SIGTERM)  # as systemd does with KillMode=mixed
    assert first.wait(30) == 0
    assert time.monotonic() - stopped < 1 + 8
    view = runner_farm.get(f"/api/v1/jobs/{job['id']}").json()
    assert view["status"] == "queued" and "interrupted" in view["reason"], view
    log = runner_farm.get(job["tasks"][0]["log_url"]).text
    assert "started" in log and log.endswith(f"{INTERRUPTED_LINE}\n"), log
    assert subprocess.run(["pgrep", "-f", f"sleep {tag}"]).returncode != 0

    start_runner()
    wait_job(runner_farm, job["id"], {"running"})
    deadline = time.monotonic() + 60
    while "run 2 of this job" not in runner_farm.get(job["setup_log_url"]).text:
        assert time.monotonic() < deadline, "the job did not run again"
        time.sleep(0.2)
    runner_farm.request("POST", f"/api/v1/jobs/{job['id']}/cancel")


JOB_NIX = """\
# A package of the job's own on the demo set's mkPackage: new on every test run.
{ busybox }:
let
  pkgs = import ./. { inherit busybox; };
  mkPackage = import ./make.nix { system = builtins.currentSystem; busybox = pkgs.busybox; };
in
mkPackage {
  pname = "job-@MARKER@";
  version = "1.0";
  description = "built by a nixfarm job";
  buildCommand = ''
    echo "building @MARKER@ in the job"
    echo 'echo hello from @MARKER@' > greeting
    install_program greeting job-greeting
  '';
}
"""


def demo_repository(where: Path, marker: str) -> Path:
    """A git repository holding the demo package set and a job.nix of the test's own."""
    repo = where / "demo"
    subprocess.run(["cp", "-r", str(nixfarm.demo.path()), str(repo)], check=True)
    (repo / "job.nix").write_text(JOB_NIX.replace("@MARKER@", marker))
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "demo"], check=True)
    return repo


def test_nix_build_outputs_and_logs_land_in_the_jobs_cache(
        runner_farm: RunningFarm, start_runner: StartRunner, tmp_path: Path, nix: Nix) -> None:
    farm = runner_farm
    marker = f"m{uuid.uuid4().hex[:12]}"
    sources = tmp_path / "sources"
    sources.mkdir()
    repo = demo_repository(sources, marker)
    start_runner("--local-source", str(sources))
    cache, public_key = farm.create_cache()
    job = submit(farm, f"""\
image: nix
packages: [coreutils]
sources:
  - file://{repo}
cache: {cache}
tasks:
  - build: |
      cd demo
      nix-build job.nix --arg busybox "$(readlink -f /bin/busybox)"
      nix-build . -A hello --arg busybox "$(readlink -f /bin/busybox)" -o result-hello
  - no-peeking: |
      # The client builds through the daemon; the results stay out of the sandbox.
      test ! -e demo/result/bin/job-greeting
      nix-store --check-validity demo/result
""")
    done = wait_job(farm, job["id"], {"success", "failed"}, 120)
    logs = all_logs(farm, done)
    assert done["status"] == "success", logs
    assert f"building {marker} in the job" in logs
    (output,) = set(re.findall(rf"/nix/store/[a-z0-9]{{32}}-job-{marker}-1\.0(?!\.drv)", logs))
    assert f"Pushed {output}" in logs

    # Another machine: a fresh store, only this cache, only its key trusted.
    store = nix.fresh_store()
    cache_url = f"{farm.url}/cache/{cache}"
    nix.substitute(store, output, cache_url, public_key)
    program = store / output.lstrip("/") / "bin/job-greeting"
    assert program.is_file() and marker in program.read_text()
    # hello came from the demo set, built (or found) on the runner: pushed too.
    hello = re.findall(r"/nix/store/[a-z0-9]{32}-hello-[0-9.]*[0-9](?!\.drv)", logs)[0]
    nix.substitute(store, hello, cache_url, public_key)

    narinfo = farm.get(f"/cache/{cache}/{output.split('/')[3][:32]}.narinfo").text
    deriver = next(line.split(": ", 1)[1] for line in narinfo.splitlines()
                   if line.startswith("Deriver: "))
    build_log = farm.get(f"/cache/{cache}/log/{deriver}")
    assert build_log.status_code == 200
    assert f"building {marker} in the job" in build_log.text


def test_unknown_packages_are_named_like_the_registry_names_them(
        runner_farm: RunningFarm, start_runner: StartRunner) -> None:
    start_runner()
    job = submit(runner_farm, "image: nix\npackages: [hello, nosuchthing, alsomissing]\n"
                              "tasks:\n  - never: hello\n")
    done = wait_job(runner_farm, job["id"], {"success", "failed"})
    assert done["status"] == "failed"
    setup = runner_farm.get(done["setup_log_url"]).text
    assert "no packages 'nosuchthing', 'alsomissing'" in setup
    assert "step 'boot' failed" in setup
    assert done["tasks"][0]["status"] == "skipped"
