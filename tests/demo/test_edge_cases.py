"""The packages that exist for the farm's edge cases: failure, timeout, size."""

import subprocess
import zlib

import pytest

from tests.demo import nixcli

MESSAGE = "error: broken: this package always fails to build"


def test_broken_fails_with_its_message_in_the_log() -> None:
    done = nixcli.build("-A", "broken")
    assert done.returncode != 0
    assert MESSAGE in done.stderr
    # The log stays readable after the failure, which is what a farm shows its users.
    drv = nixcli.run("nix-instantiate", str(nixcli.DEMO), "-A", "broken").stdout.strip()
    log = nixcli.run("nix-store", "--read-log", drv)
    assert MESSAGE in log.stdout


@pytest.mark.slow
def test_slow_is_stopped_by_nix_timeout() -> None:
    # timeout=30 only guards the test; Nix's own timeout must end the build after 3 s.
    done = nixcli.build("-A", "slow", "--option", "timeout", "3", timeout=30)
    assert done.returncode != 0
    assert "slow: sleeping forever" in done.stderr
    assert "timed out after 3 seconds" in done.stderr


@pytest.mark.slow
def test_slow_never_finishes_on_its_own() -> None:
    with pytest.raises(subprocess.TimeoutExpired):
        nixcli.build("-A", "slow", timeout=2)


@pytest.mark.slow
def test_bigdata_is_over_100_mb_and_incompressible() -> None:
    (bigdata,) = nixcli.build_paths("bigdata")
    assert nixcli.nar_size(bigdata) > 100 * 1024 * 1024
    assert nixcli.closure(bigdata) == {bigdata} | nixcli.references(bigdata)
    blob = bigdata / "share/bigdata/blob"
    report = subprocess.run(
        [str(bigdata / "bin/bigdata")], capture_output=True, text=True, env={}, check=True
    ).stdout
    assert report == f"bigdata: {blob.stat().st_size} bytes (110 MiB) in {blob}\n"
    with blob.open("rb") as data:
        sample = data.read(4 << 20)
    assert len(zlib.compress(sample, 9)) > len(sample)
