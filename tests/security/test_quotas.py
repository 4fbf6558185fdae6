"""Disk quotas (issue 12, point 4): a job's home, its log and its artifacts are limited
by the farm's settings, and a job that hits one says so in its result."""

from __future__ import annotations

from collections.abc import Iterator

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
    assert f"artifact big.bin is {2 * MIB} bytes; this farm keeps artifacts of at most " \
           f"{MIB} bytes" in job["reason"]
    assert job["artifacts"] == []
    job, log = user.run({"many": "touch a b c"}, "artifacts:\n  - a\n  - b\n  - c\n")
    assert job["status"] == "failed", log
    assert "the job names 3 artifacts; this farm keeps at most 2 per job" in job["reason"]
