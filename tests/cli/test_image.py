"""`nixfarm image`: list, build (cached by recipe hash), check and install, as an
operator runs them, with the debian/bookworm image (a real VM boot for the check)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nixfarm import images
from nixfarm.runner.workdir import runner_dir
from tests.fixtures.farm import NIXFARM
from tests.fixtures.images import BUILDS

pytestmark = pytest.mark.slow


def image(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NIXFARM, "image", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})  # fmt: skip


def states(listing: str) -> dict[str, str]:
    """IMAGE -> STATE from `image list`."""
    rows = [line.split() for line in listing.splitlines()[1:]]
    return {row[0]: " ".join(row[4 if row[1] != "->" else 6:]) for row in rows}


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    """A runner's work directory (maybe moved under /var/tmp: runner_dir), removed after."""
    yield tmp_path / "work"
    shutil.rmtree(runner_dir(tmp_path / "work"), ignore_errors=True)


def test_build_check_install_list(debian_build: Path, work: Path) -> None:
    common = ["--work-dir", str(work), "--builds", str(BUILDS)]
    listed = image("list", *common)
    assert listed.returncode == 0, listed.stderr
    before = states(listed.stdout)
    assert before["debian/bookworm"] == "built", listed.stdout
    assert before["demo/latest"] == "built on first use"
    assert before["alpine/edge"] == "recipe only"

    started = time.monotonic()
    built = image("build", "debian/stable", *common)  # the alias: the same build
    assert built.returncode == 0, built.stderr
    assert built.stdout.strip() == str(debian_build)
    assert time.monotonic() - started < 30  # cached: nothing was built

    installed = image("install", "debian/stable", *common)  # checks first: boots it
    assert installed.returncode == 0, installed.stderr
    assert "sanity check passed" in installed.stderr
    assert "debian/stable powered off" in installed.stderr
    catalogue = runner_dir(work) / "images"
    assert installed.stdout.strip() == (
        f"installed debian/bookworm (x86_64) at {catalogue / 'debian/bookworm/x86_64'}")
    assert (catalogue / "debian/stable/x86_64" / images.DISK_FILE).is_file()
    after = states(image("list", *common).stdout)
    assert after["debian/bookworm"] == after["debian/stable"] == "installed"


def test_images_that_cannot_be_built_here_say_why(tmp_path: Path, work: Path) -> None:
    common = ["--work-dir", str(work), "--builds", str(tmp_path / "builds")]
    done = image("build", "alpine/edge", *common)
    assert done.returncode == 1
    assert "alpine/edge needs apk.static, which only an alpine host has" in done.stderr
    done = image("install", "debian/bookworm", "--no-check", *common)
    assert done.returncode == 1 and "build the image first" in done.stderr, done.stderr
    done = image("check", "debian/bookworm", *common)
    assert done.returncode == 2 and "nixfarm image build debian/bookworm" in done.stderr
    done = image("build", "debian/trixie", *common)
    assert done.returncode == 2 and "There is no image debian/trixie" in done.stderr
