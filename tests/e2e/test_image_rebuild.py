"""Images rebuild themselves, through a real farm: `nixfarm image schedule` makes a
scheduled job of a distro's build.yml, the schedule fires it, the job leaves the image
as its artifacts, and `nixfarm image install --from-job` puts that image in a
runner's catalogue.

With a tiny recipe whose genimg writes a small (real, empty) qcow2, run on demo/latest
in bwrap: Debian's own build (tests/images/test_rebuild.py checks its manifest) runs
debootstrap in a VM for many minutes under TCG.
"""

from __future__ import annotations

import base64
import gzip
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from nixfarm import images
from nixfarm.runner.workdir import runner_dir
from tests.fixtures.farm import RunningFarm, free_port
from tests.fixtures.jobs import job_logs, wait_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

BUILD_YML = """\
# The tiny distro's build job, shaped as nixfarm/images/debian/build.yml.
image: demo/latest
tasks:
  - genimg: |
      ./recipe/genimg "$HOME/out" "$release" "$arch"
      cp recipe/recipe.sha256 out/
artifacts:
  - out/root.img.qcow2
  - out/recipe.sha256
"""


def tiny_catalogue(where: Path) -> tuple[Path, bytes]:
    """A catalogue of recipes with one disk image, tiny/1; and the image it builds."""
    recipes = where / "recipes"
    release = recipes / "tiny/1/x86_64"
    release.mkdir(parents=True)
    (release / "image.toml").write_text('description = "a test image"\nkind = "disk"\n')
    (release / "functions").write_text("sanity_check() {\n\ttrue\n}\n")
    qcow2 = where / "tiny.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "16M"], check=True)
    encoded = base64.encodebytes(gzip.compress(qcow2.read_bytes())).decode()
    genimg = recipes / "tiny/genimg"
    genimg.write_text('#!/bin/sh\nset -eu\nmkdir -p "$1"\n'
                      f"base64 -d <<'IMAGE' | gunzip > \"$1/root.img.qcow2\"\n{encoded}IMAGE\n")
    genimg.chmod(0o755)
    (recipes / "tiny/build.yml").write_text(BUILD_YML)
    return recipes, qcow2.read_bytes()


def scheduled_job(farm: RunningFarm, schedule: int, seconds: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        jobs = farm.get("/api/v1/jobs", params={"tag": f"schedule:{schedule}"}).json()["jobs"]
        if jobs:
            job: dict[str, Any] = jobs[-1]
            return job
        time.sleep(0.3)
    listed = farm.cli("schedule", "list").stdout
    raise AssertionError(f"schedule {schedule} made no job in {seconds} s:\n{listed}\n"
                         f"{farm.log.read_text()[-3000:]}")


def test_a_schedule_rebuilds_an_image_that_a_runner_installs_from_the_job(
        tmp_path: Path) -> None:
    recipes, image = tiny_catalogue(tmp_path)
    recipe = images.find(recipes, "tiny/1")
    farm = RunningFarm(tmp_path / "data", free_port())
    farm.start()
    try:
        made = farm.cli("image", "schedule", "tiny/1", "--recipes", str(recipes),
                        "--cron", "* * * * * */2").stdout
        assert made.startswith("schedule ") and "next build of tiny/1" in made, made
        schedule = int(made.split()[1].rstrip(":"))
        job = scheduled_job(farm, schedule)
        farm.cli("schedule", "delete", str(schedule))
        job = wait_job(farm, job["id"], {"success", "failed"}, seconds=240)
        log = job_logs(farm, job)
        assert job["status"] == "success", log
        assert job["note"] == "rebuild tiny/1 (x86_64)"
        assert {a["name"] for a in job["artifacts"]} == {"root.img.qcow2", "recipe.sha256"}

        # A runner's work directory takes it, by the job's URL (the server's from it).
        work = tmp_path / "runner"
        done = farm.cli("image", "install", "tiny/1", "--recipes", str(recipes), "--no-check",
                        "--from-job", f"{farm.url}/jobs/{job['id']}", "--url", "",
                        "--work-dir", str(work))
        place = runner_dir(work) / "images/tiny/1/x86_64"
        assert (place / images.DISK_FILE).read_bytes() == image, done.stderr
        assert (place / images.HASH_FILE).read_text() == images.recipe_hash(recipe) + "\n"
        assert (place / "functions").read_text() == (recipe.directory / "functions").read_text()
        assert f"installed tiny/1 (x86_64) at {place}" in done.stdout
        # A job that built no image is refused, saying why.
        other = farm.request("POST", "/api/v1/jobs", json={
            "manifest": "image: demo/latest\ntasks:\n  - t: echo no image\n"}).json()
        wait_job(farm, other["id"], {"success"}, seconds=240)
        refused = farm.cli("image", "install", "tiny/1", "--recipes", str(recipes),
                           "--no-check", "--from-job", str(other["id"]), "--work-dir",
                           str(work), check=False)
        assert refused.returncode == 1, refused
        assert (f"Job {other['id']} has no artifact root.img.qcow2 or recipe.sha256"
                in refused.stderr), refused.stderr
    finally:
        farm.stop()
