"""A release build on a `local` builder, for real: `nixfarm release` of a git repository
made by the test (a release.nix over the demo package set) queues a job; the autoscaler
creates a builder, qemu's iPXE ROM netboots the farm's image over user-mode networking
(TCG here), the bootstrap enrolls, the builder's runner clones the revision from the
farm, builds it and pushes the outputs and build logs, signed by the server, to the
cache; the console log shows the boot while it runs; the machine is destroyed after the
job; a fresh store substitutes the output with signatures required. The farm is the
demo's (`up --demo`, its pool demo-local, its embedded runner present): the release is
reserved for the pool, so the builder runs it, never the embedded runner. Slow (the
netboot image is made for the first release, then a VM under TCG boots a 160 MB
initramfs and imports the runner): 5-10 min, more on a loaded host."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nixfarm.bootstrap import DEMO_CACHE
from nixfarm.cli.up import DEMO_POOL
from tests.builders.releaserepo import release_repository
from tests.fixtures.farm import RunningFarm, free_port
from tests.fixtures.jobs import wait_job
from tests.fixtures.nixenv import Nix

# The demo's configuration but for a quicker autoscaler: no pools (`up --demo` adds its
# demo-local pool) and the embedded runner present, as in the README.
CONFIG = """\
[builders]
interval_seconds = 1
"""


@pytest.fixture
def local_farm(tmp_path: Path) -> Iterator[RunningFarm]:
    data = tmp_path / "data"
    data.mkdir()
    (data / "nixfarm.toml").write_text(CONFIG)
    farm = RunningFarm(data, free_port())
    farm.start("--demo")
    try:
        yield farm
    finally:
        farm.stop()


def _console(farm: RunningFarm, builder_id: int) -> str:
    r = farm.get(f"/api/v1/builders/{builder_id}/console")
    assert r.status_code == 200, r.text
    return r.text


@pytest.mark.timeout(1500)  # a TCG guest on a shared 2-core machine
def test_a_local_builder_netboots_builds_pushes_and_goes_away(
        local_farm: RunningFarm, nix: Nix, tmp_path: Path) -> None:
    farm, cache = local_farm, DEMO_CACHE
    r = farm.get(f"/api/v1/caches/{cache}")
    assert r.status_code == 200, r.text
    public_key = r.json()["public_key"]
    marker = f"m{uuid.uuid4().hex[:12]}"
    repo, commit = release_repository(tmp_path, marker, nix.build("busybox"))
    r = farm.request("POST", "/api/v1/releases", json={
        "repo": str(repo), "rev": commit, "cache": cache})
    assert r.status_code == 201, r.text
    job: dict[str, Any] = r.json()
    assert job["pool"] == DEMO_POOL, job  # reserved: the embedded runner may not take it

    # A builder is created for the queued job, and its console shows its boot live.
    deadline = time.monotonic() + 120
    builder: dict[str, Any] | None = None
    while builder is None:
        assert time.monotonic() < deadline, "no builder was created"
        builders = farm.get("/api/v1/builders").json()
        builder = builders[0] if builders and builders[0]["instance_id"] else None
        time.sleep(0.5)
    assert builder["pool"] == DEMO_POOL and builder["provider"] == "local"
    instance = farm.data_dir / "builders" / "local" / builder["instance_id"]
    assert instance.is_dir()
    # The demo makes its netboot image for the first release: the firmware waits for it.
    deadline = time.monotonic() + 600
    while "nixfarm-bootstrap: enrolled" not in _console(farm, builder["id"]):
        assert time.monotonic() < deadline, (instance / "serial.log").read_text()
        time.sleep(1)
    console = _console(farm, builder["id"])
    assert "Linux version" in console  # the kernel's own messages
    assert "encrypted swap" in console and "root: a tmpfs" in console
    running = farm.get(f"/api/v1/builders/{builder['id']}").json()
    assert running["state"] in ("ready", "busy"), running

    done = wait_job(farm, job["id"], {"success", "failed"}, 300)
    logs = "".join(farm.get(url).text for url in
                   [done["setup_log_url"], *(t["log_url"] for t in done["tasks"])])
    assert done["status"] == "success", logs + _console(farm, builder["id"])
    assert done["runner"] == builder["name"], done  # the builder ran it
    assert f"building {marker} for a release" in logs
    (output,) = set(re.findall(
        rf"/nix/store/[a-z0-9]{{32}}-release-{marker}-1\.0(?!\.drv)", logs))
    assert f"Pushed {output}" in logs

    # Another machine substitutes it from the cache, signatures required.
    store = nix.fresh_store()
    nix.substitute(store, output, f"{farm.url}/cache/{cache}", public_key)
    assert marker in (store / output.lstrip("/") / "bin/released").read_text()
    # Its build log went along (what `nix log` reads).
    drv = re.findall(rf"/nix/store/([a-z0-9]{{32}}-release-{marker}-1\.0\.drv)", logs)[0]
    log = farm.get(f"/cache/{cache}/log/{drv}", token="")
    assert log.status_code == 200 and f"building {marker} for a release" in log.text

    # Destroyed after its job: the row says so, and the VM and its files are gone.
    deadline = time.monotonic() + 60
    while farm.get(f"/api/v1/builders/{builder['id']}").json()["state"] != "destroyed":
        assert time.monotonic() < deadline, "the builder was not destroyed after its job"
        time.sleep(0.5)
    assert not instance.exists()
