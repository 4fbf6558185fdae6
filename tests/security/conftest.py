"""Two tenants on one real farm, attacking each other, the farm and the host.

A farm (``nixfarm up``, no embedded runner) and one ``nixfarm runner`` as root, with
real bubblewrap sandboxes and its own nix-daemons. Tenant ``alice`` and tenant
``mallory`` each hold a token with only ``jobs:submit``; the admin token is the
farm's. Jobs run ``image: nix`` (the demo package set) with Nix through the runner.

The attacks that make sense in a VM too run against ``nixfarm runner --sandbox vm``
(fixture ``attacker``: mallory on bwrap, then on one farm with a VM runner shared by
the whole session: TCG boots are slow here).
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import nixfarm.demo
from nixfarm.runner.workdir import runner_dir
from tests.fixtures.farm import NIXFARM, RunningFarm, free_port
from tests.fixtures.jobs import runnerless_env

#: What every tenant's job image has: a shell, coreutils and Nix through the runner.
IMAGE = "image: nix\npackages: [coreutils, busybox]\n"


@dataclass
class Tenant:
    farm: RunningFarm
    name: str
    token: str
    #: The sandbox the farm's runner gives its jobs.
    sandbox: str = "bwrap"

    def submit(self, tasks: dict[str, str], extra: str = "", **body: Any) -> dict[str, Any]:
        text = IMAGE + extra + "tasks:\n" + "".join(
            f"  - {name}: |\n" + "".join(f"      {line}\n" for line in script.splitlines())
            for name, script in tasks.items())
        r = self.farm.request("POST", "/api/v1/jobs", self.token,
                              json={"manifest": text, **body})
        assert r.status_code == 201, r.text
        job: dict[str, Any] = r.json()
        return job

    def secret(self, value: str, path: str = "~/secret") -> str:
        name = f"s-{uuid.uuid4().hex[:8]}"
        r = self.farm.request("POST", "/api/v1/secrets", self.token, json={
            "name": name, "kind": "file", "path": path, "mode": 0o600,
            "data": base64.b64encode(value.encode()).decode()})
        assert r.status_code == 201, r.text
        return name

    def wait(self, job: dict[str, Any], seconds: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            r = self.farm.get(f"/api/v1/jobs/{job['id']}", self.token, params=_key(job))
            assert r.status_code == 200, r.text
            seen: dict[str, Any] = r.json()
            if seen["status"] in ("success", "failed", "timeout", "cancelled"):
                return seen
            time.sleep(0.2)
        raise AssertionError(f"job {job['id']} did not end in {seconds} s")

    def logs(self, job: dict[str, Any]) -> str:
        urls = [job["setup_log_url"], *(t["log_url"] for t in job["tasks"])]
        return "".join(self.farm.get(url, self.token).text for url in urls)

    def run(self, tasks: dict[str, str], extra: str = "", seconds: float = 180
            ) -> tuple[dict[str, Any], str]:
        """Submit, wait for the end; (the job, all its logs)."""
        job = self.wait(self.submit(tasks, extra), seconds)
        return job, self.logs(job)


def _key(job: dict[str, Any]) -> dict[str, str]:
    key = job.get("key")
    return {"key": key} if isinstance(key, str) else {}


def tenant(farm: RunningFarm, name: str) -> Tenant:
    token = farm.cli("token", "create", "--name", f"{name}-{uuid.uuid4().hex[:6]}",
                     "--scope", "jobs:submit").stdout.strip()
    return Tenant(farm, name, token)


@dataclass
class Runner:
    process: subprocess.Popen[bytes]
    work_dir: Path
    log: Path


def start_runner(farm: RunningFarm, where: Path, *extra: str,
                 token_options: tuple[str, ...] = (), name: str | None = None) -> Runner:
    """``nixfarm runner`` as an operator starts it: the token (made with ``token_options``,
    a runner pool) from a file."""
    token = farm.cli("token", "create", "--name", f"runner-{uuid.uuid4().hex[:6]}",
                     "--scope", "runner", *token_options).stdout.strip()
    token_file = where / "runner.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    log = where / f"runner-{uuid.uuid4().hex[:6]}.log"
    work = where / "work"
    env = {k: v for k, v in os.environ.items() if k != "NIXFARM_TOKEN"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [NIXFARM, "runner", "--url", farm.url, "--token-file", str(token_file),
             "--name", name or f"sec-{uuid.uuid4().hex[:6]}", "--work-dir", str(work),
             "--nix-source", str(nixfarm.demo.path()), "--nix-option", "substituters=",
             *extra],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    return Runner(process, work, log)


def stop_runner(runner: Runner, sig: int = signal.SIGTERM) -> None:
    if runner.process.poll() is None:
        os.killpg(runner.process.pid, sig)
        runner.process.wait(30)


def make_farm(where: Path, network: bool, **env: str) -> RunningFarm:
    farm = RunningFarm(where / "data", free_port(), extra_env=runnerless_env(
        NIXFARM_JOBS__NETWORK="true" if network else "false", **env))
    farm.start()
    return farm


@pytest.fixture(scope="module")
def offline_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    """A farm whose jobs have no network, with a runner of two slots."""
    where = tmp_path_factory.mktemp("sec-offline")
    farm = make_farm(where, network=False)
    runner = start_runner(farm, where, "--slots", "2")
    yield farm
    stop_runner(runner)
    farm.stop()


@pytest.fixture(scope="module")
def alice(offline_farm: RunningFarm) -> Tenant:
    return tenant(offline_farm, "alice")


@pytest.fixture(scope="module")
def mallory(offline_farm: RunningFarm) -> Tenant:
    return tenant(offline_farm, "mallory")


def anonymous(farm: RunningFarm, path: str, **params: str) -> httpx.Response:
    """GET ``path`` (its own query kept) with no token."""
    return farm.get(path, "", params=params) if params else farm.get(path, "")


#: Where the VM tests keep the guest kernel between runs (tests/runner/vm/conftest.py).
KERNELS = Path(tempfile.gettempdir()) / f"nixfarm-test-vm-{os.getuid()}" / "vm" / "kernel"


def start_vm_runner(farm: RunningFarm, where: Path, *extra: str) -> Runner:
    """``nixfarm runner --sandbox vm``, given the kernel the VM tests fetched (if they
    did: else it fetches one from Debian, ~27 MB) and kept for the next runs."""
    home = runner_dir(where / "work")
    if KERNELS.is_dir() and not (home / "vm" / "kernel").exists():
        shutil.copytree(KERNELS, home / "vm" / "kernel", symlinks=True)
    runner = start_runner(farm, where, "--sandbox", "vm", *extra)
    if not KERNELS.exists():
        wait_registered(runner, 600)
        with_kernel = home / "vm" / "kernel"
        if with_kernel.is_dir():
            KERNELS.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(with_kernel, KERNELS, symlinks=True, dirs_exist_ok=True)
    return runner


def wait_registered(runner: Runner, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while "registered" not in runner.log.read_text(errors="replace"):
        assert runner.process.poll() is None, runner.log.read_text(errors="replace")
        assert time.monotonic() < deadline, runner.log.read_text(errors="replace")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def vm_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    """A farm whose jobs have no network, with one VM runner (one slot), for the
    whole session."""
    where = tmp_path_factory.mktemp("sec-vm")
    farm = make_farm(where, network=False)
    runner = start_vm_runner(farm, where)
    yield farm
    stop_runner(runner)
    farm.stop()
    shutil.rmtree(runner_dir(where / "work"), ignore_errors=True)


SANDBOXES = ["bwrap", pytest.param("vm", marks=pytest.mark.slow)]


@pytest.fixture(params=SANDBOXES)
def attacker(request: pytest.FixtureRequest) -> Tenant:
    """A tenant with ``jobs:submit`` on a farm without network, in each sandbox."""
    if request.param == "bwrap":
        found: Tenant = request.getfixturevalue("mallory")
        return found
    on_vm = tenant(request.getfixturevalue("vm_farm"), "mallory-vm")
    on_vm.sandbox = "vm"
    return on_vm
