"""The CLI as a daily tool, against a real farm (`nixfarm up --demo`, its embedded
runner running real jobs): JSON out of every listing and of submit, exit codes that
follow the job, cancelling that is idempotent, and a cancelled task shown so."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.farm import RunningFarm, free_port
from tests.fixtures.jobs import wait_job


@pytest.fixture(scope="module")
def demo_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    running = RunningFarm(tmp_path_factory.mktemp("daily") / "data", free_port(),
                          extra_env={"NIXFARM_JOBS__SHUTDOWN_GRACE_SECONDS": "0"})
    running.start("--demo")
    yield running
    running.stop()


def _manifest(tmp_path: Path, script: str) -> str:
    path = tmp_path / f"job-{time.monotonic_ns()}.yml"
    path.write_text(f"image: nix\npackages: [busybox]\ntasks:\n  - work: {script}\n")
    return str(path)


def test_listings_and_submit_print_json(demo_farm: RunningFarm, tmp_path: Path) -> None:
    submitted = demo_farm.cli("submit", "--json", "--tag", "daily",
                              _manifest(tmp_path, "echo hi"))
    job: dict[str, Any] = json.loads(submitted.stdout)
    assert job["tags"] == ["daily"] and job["status"] in ("queued", "running")
    followed = demo_farm.cli("submit", "--json", "--follow", _manifest(tmp_path, "echo hi"))
    ended = json.loads(followed.stdout)  # the log went to stderr
    assert ended["status"] == "success" and "hi" in followed.stderr
    listed = json.loads(demo_farm.cli("jobs", "--json", "--limit", "5").stdout)
    assert {job["id"], ended["id"]} <= {j["id"] for j in listed}
    caches = json.loads(demo_farm.cli("cache", "list", "--json").stdout)
    assert "demo" in [c["name"] for c in caches]
    assert json.loads(demo_farm.cli("cache", "info", "demo", "--json").stdout)["name"] == "demo"
    tokens = json.loads(demo_farm.cli("token", "list", "--json").stdout)
    assert tokens and all(t["secret"] is None for t in tokens)
    assert json.loads(demo_farm.cli("secret", "list", "--json").stdout) == []


def test_logs_follow_exits_as_submit_follow(demo_farm: RunningFarm, tmp_path: Path) -> None:
    failing = _manifest(tmp_path, "echo going; exit 3")
    submitted = demo_farm.cli("submit", "--follow", failing, check=False)
    assert submitted.returncode == 1
    job_id = submitted.stdout.split()[0]
    followed = demo_farm.cli("logs", "-f", job_id, check=False)
    assert followed.returncode == 1, followed.stderr
    assert followed.stderr.strip().splitlines()[-1].startswith(f"job {job_id} failed")
    assert "going" in followed.stdout
    plain = demo_farm.cli("logs", job_id, check=False)  # reading a log is no failure
    assert plain.returncode == 0
    ok = demo_farm.cli("submit", _manifest(tmp_path, "echo fine")).stdout.split()[0]
    assert demo_farm.cli("logs", "-f", ok, check=False).returncode == 0


def test_cancel_is_idempotent_and_the_running_task_shows_cancelled(
        demo_farm: RunningFarm, tmp_path: Path) -> None:
    job_id = demo_farm.cli("submit", _manifest(tmp_path, "echo started; sleep 600")
                           ).stdout.split()[0]
    deadline = time.monotonic() + 90
    while "started" not in demo_farm.get(f"/api/v1/jobs/{job_id}/tasks/work/log").text:
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.2)
    cancelled = demo_farm.cli("cancel", job_id, check=False)
    assert (cancelled.returncode, cancelled.stdout.strip()) == (0, f"job {job_id} cancelled")
    job = wait_job(demo_farm, int(job_id), {"cancelled"})
    assert [t["status"] for t in job["tasks"]] == ["cancelled"]
    time.sleep(3)  # the runner has killed the task and confirmed: still "cancelled"
    job = demo_farm.get(f"/api/v1/jobs/{job_id}").json()
    assert [t["status"] for t in job["tasks"]] == ["cancelled"]
    again = demo_farm.cli("cancel", job_id, check=False)
    assert (again.returncode, again.stdout.strip()) == (
        0, f"job {job_id} already ended: cancelled")
    assert again.stderr == ""
