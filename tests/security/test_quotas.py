"""Disk quotas (issue 12, point 4): a job's home, its log and its artifacts are limited
by the farm's settings, and a job that hits one says so in its result."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.fixtures.farm import RunningFarm
from tests.security.conftest import Tenant, make_farm, start_runner, stop_runner, tenant

MIB = 1024**2


@pytest.fixture(scope="module")
def small_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    where = tmp_path_factory.mktemp("sec-quotas")
    farm = make_farm(where, network=False, NIXFARM_JOBS__HOME_BYTES=str(32 * MIB),
                     NIXFARM_JOBS__LOG_BYTES=str(MIB), NIXFARM_JOBS__ARTIFACTS="2",
                     NIXFARM_JOBS__ARTIFACT_BYTES=str(MIB))
    runner = start_runner(farm, where)
    yield farm
    stop_runner(runner)
    farm.stop()


@pytest.fixture(scope="module")
def user(small_farm: RunningFarm) -> Tenant:
    return tenant(small_farm, "user")


def test_the_home_is_limited(user: Tenant) -> None:
    job, log = user.run({"fill": "df -k ~ | tail -1\n"
                                 "dd if=/dev/zero of=$HOME/big bs=1048576 count=64\n"})
    assert job["status"] == "failed", log
    assert "No space left on device" in log
    # df shows the home's own file system, 32 MiB.
    assert " 32768 " in log
    # The log says which limit it was (a VM's job says the same of its disk).
    assert "[nixfarm] the job's disk is full: its home is limited to 32 MiB " \
        "(jobs.home_bytes)" in log
    assert "the job's disk is full" in job["reason"]


def test_the_log_is_limited_and_the_job_says_so(user: Tenant) -> None:
    job, log = user.run({"flood": "yes"}, seconds=120)
    assert job["status"] == "failed", log[-500:]
    assert "log limit exceeded" in job["reason"]
    assert job["tasks"][0]["status"] == "failed"
    assert len(log.encode()) < MIB + 4096
    assert log.rstrip().endswith(f"log limit exceeded: the job's logs reached {MIB} bytes; "
                                 "the log is cut here")


def test_artifacts_are_limited_in_size_and_number(user: Tenant) -> None:
    job, log = user.run({"big": "dd if=/dev/zero of=big.bin bs=1048576 count=2"},
                        "artifacts:\n  - big.bin\n")
    assert job["status"] == "failed", log
    assert f"artifact big.bin is larger than {MIB} bytes, the most this farm keeps" \
        in job["reason"]
    assert job["artifacts"] == []
    # Endless sources are not copied out at all: a device behind a link, a pipe; and a
    # directory over the limit is refused before its tar is made.
    for setup in ("ln -s /dev/zero big.bin", "mkfifo big.bin",
                  "mkdir big.bin && dd if=/dev/zero of=big.bin/x bs=1048576 count=2"):
        job, log = user.run({"odd": setup}, "artifacts:\n  - big.bin\n", seconds=120)
        assert job["status"] == "failed", log
        assert "big.bin is not a regular file or a directory" in job["reason"] or \
            f"big.bin holds more than {MIB} bytes" in job["reason"], (setup, job["reason"])
        assert job["artifacts"] == []
    job, log = user.run({"many": "touch a b c"}, "artifacts:\n  - a\n  - b\n  - c\n")
    assert job["status"] == "failed", log
    assert "the job names 3 artifacts; this farm keeps at most 2 per job" in job["reason"]


def test_the_server_holds_the_artifact_quotas_for_any_runner(small_farm: RunningFarm,
                                                             user: Tenant) -> None:
    """A runner that ignored them (old, buggy) still cannot store more."""
    image = f"t{uuid.uuid4().hex[:8]}/quota"
    token = small_farm.cli("token", "create", "--name", f"proto-{uuid.uuid4().hex[:6]}",
                           "--scope", "runner").stdout.strip()
    with httpx.Client(base_url=small_farm.url, timeout=60,
                      headers={"Authorization": f"Bearer {token}"}) as runner:
        r = runner.post("/api/v1/runners", json={
            "name": f"proto-{uuid.uuid4().hex[:6]}", "images": [image],
            "sandboxes": ["bwrap"], "slots": 1})
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
        manifest = f"image: {image}\ntasks:\n  - t: |\n      true\n"
        r = small_farm.request("POST", "/api/v1/jobs", user.token, json={"manifest": manifest})
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        r = runner.post(f"/api/v1/runners/{rid}/claim", json={"wait": 10})
        assert r.status_code == 200 and r.json()["job_id"] == job_id, r.text
        base = f"/api/v1/runners/{rid}/jobs/{job_id}/artifacts"
        r = runner.put(f"{base}/big.bin", params={"path": "big.bin"},
                       content=b"\0" * (2 * MIB))
        assert r.status_code in (400, 422), r.text
        assert f"artifact big.bin is more than {MIB} bytes" in r.text
        for name in ("a", "b"):
            r = runner.put(f"{base}/{name}", params={"path": name}, content=b"x")
            assert r.status_code == 201, r.text
        r = runner.put(f"{base}/c", params={"path": "c"}, content=b"x")
        assert r.status_code in (400, 422), r.text
        assert "already has 2 artifacts; this farm keeps at most 2 per job" in r.text
        runner.post(f"/api/v1/runners/{rid}/jobs/{job_id}/finish",
                    json={"status": "failed", "reason": "test over"})
