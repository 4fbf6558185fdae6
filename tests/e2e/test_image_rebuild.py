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
import hashlib
import os
import shutil
import struct
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
      if [ -n "${corrupt:-}" ]; then
        printf 'not an image' > bad && cat bad out/root.img.qcow2 > out/x
        mv out/x out/root.img.qcow2
      fi
artifacts:
  - out/root.img.qcow2
  - out/recipe.sha256
"""


def tiny_catalogue(where: Path, qcow2: Path | None = None,
                   functions: str = "sanity_check() {\n\ttrue\n}\n") -> tuple[Path, bytes]:
    """A catalogue of recipes with one disk image, tiny/1; and the image it builds
    (``qcow2``, or an empty one)."""
    recipes = where / "recipes"
    release = recipes / "tiny/1/x86_64"
    release.mkdir(parents=True)
    (release / "image.toml").write_text('description = "a test image"\nkind = "disk"\n')
    (release / "functions").write_text(functions)
    if qcow2 is None:
        qcow2 = where / "tiny.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "16M"],
                       check=True)
    encoded = base64.encodebytes(gzip.compress(qcow2.read_bytes())).decode()
    genimg = recipes / "tiny/genimg"
    genimg.write_text('#!/bin/sh\nset -eu\nmkdir -p "$1"\n'
                      f"base64 -d <<'IMAGE' | gunzip > \"$1/root.img.qcow2\"\n{encoded}IMAGE\n")
    genimg.chmod(0o755)
    (recipes / "tiny/build.yml").write_text(BUILD_YML)
    return recipes, qcow2.read_bytes()


def scheduled_job(farm: RunningFarm, schedule: int, seconds: float = 120,
                  after: int = 0) -> dict[str, Any]:
    """The job schedule ``schedule`` made, of those after job ``after`` (SQLite gives a
    deleted schedule's id to the next one)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        jobs = [j for j in farm.get("/api/v1/jobs", params={"tag": f"schedule:{schedule}"}
                                    ).json()["jobs"] if j["id"] > after]
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


# --- runners install scheduled builds themselves ----------------------------------

#: A bootable tiny image: the guest brings busybox (/run/nixfarm/busybox, docs/vm.md),
#: so the image holds only symlinks to it, the build user, and a file that says which
#: build it is. Powering off needs root, and the image has no sudo: a 157-byte static
#: program, setuid root, makes the reboot(POWER_OFF) system call (built below).
APPLETS = ("sh", "cat", "id", "env", "true", "false", "test", "[", "echo", "ls", "mkdir",
           "rm", "touch", "grep", "head", "sleep", "printf", "uname", "su")
TINY_FUNCTIONS = """\
poweroff_cmd=/sbin/tiny-poweroff

sanity_check() {
\t[ "$(id -u)" = 1000 ] && echo "tiny build $(cat /etc/tiny-version)"
}
"""


def poweroff_program() -> bytes:
    """An x86-64 ELF that calls reboot(LINUX_REBOOT_CMD_POWER_OFF), then exit(1)."""
    code = bytes.fromhex(
        "bfaddee1fe"  # mov edi, LINUX_REBOOT_MAGIC1
        "be69191228"  # mov esi, LINUX_REBOOT_MAGIC2
        "badcfe2143"  # mov edx, LINUX_REBOOT_CMD_POWER_OFF
        "4531d2"  # xor r10d, r10d
        "b8a9000000"  # mov eax, 169 (reboot)
        "0f05"  # syscall
        "bf01000000"  # mov edi, 1
        "b83c000000"  # mov eax, 60 (exit)
        "0f05")  # syscall
    base, size = 0x400000, 64 + 56 + len(code)
    header = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + b"\0" * 9, 2, 0x3E, 1,
                         base + 64 + 56, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    program = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)
    return header + program + code


def bootable_image(where: Path, version: str) -> Path:
    """A qcow2 of an ext4 root that the VM sandbox boots; /etc/tiny-version is ``version``."""
    root = where / f"root-{version}"
    for d in ("bin", "sbin", "etc", "dev", "proc", "sys", "run", "tmp", "var/tmp", "root",
              "home/build"):
        (root / d).mkdir(parents=True)
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("/run/nixfarm/busybox")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                     "build:x:1000:1000:build:/home/build:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\nbuild:x:1000:\n")
    (root / "etc/tiny-version").write_text(version + "\n")
    poweroff = root / "sbin/tiny-poweroff"
    poweroff.write_bytes(poweroff_program())
    poweroff.chmod(0o4755)
    os.chown(root / "home/build", 1000, 1000)
    (root / "tmp").chmod(0o1777)
    raw, qcow2 = where / f"tiny-{version}.img", where / f"tiny-{version}.qcow2"
    subprocess.run(["mkfs.ext4", "-q", "-d", str(root), str(raw), "4M"], check=True)
    subprocess.run(["qemu-img", "convert", "-c", "-O", "qcow2", str(raw), str(qcow2)],
                   check=True)
    return qcow2


def runner_builds(farm: RunningFarm) -> dict[str, str]:
    runners = farm.get("/api/v1/runners").json()
    builds: dict[str, str] = runners[0]["image_builds"] if runners else {}
    return builds


def wait_runner_build(farm: RunningFarm, says: str, seconds: float = 300) -> dict[str, str]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        builds = runner_builds(farm)
        if says in builds.get("tiny/1 (x86_64)", ""):
            return builds
        time.sleep(0.5)
    raise AssertionError(f"the runner's tiny/1 never said {says!r} in {seconds} s: "
                         f"{runner_builds(farm)}\n{farm.log.read_text()[-6000:]}")


def tiny_version(farm: RunningFarm) -> str:
    """What /etc/tiny-version says in a job on tiny/1."""
    made = farm.request("POST", "/api/v1/jobs", json={
        "manifest": "image: tiny/1\ntasks:\n  - version: cat /etc/tiny-version\n"})
    assert made.status_code == 201, made.text
    job = wait_job(farm, made.json()["id"], {"success", "failed"}, seconds=300)
    setup, logs = job_logs(farm, job)
    assert job["status"] == "success", (setup, logs)
    return logs[0].strip().splitlines()[-1]  # (after the "+ cat ..." line)


def rebuild_once(farm: RunningFarm, manifest: str, after: int = 0) -> dict[str, Any]:
    """An admin's image schedule of ``manifest`` for tiny/1, fired once; its job (after
    job ``after``), ended."""
    made = farm.request("POST", "/api/v1/schedules", json={
        "cron": "* * * * * */2", "manifest": manifest, "image": "tiny/1"})
    assert made.status_code == 201, made.text
    schedule = made.json()
    assert schedule["image"] == "tiny/1" and schedule["arch"] == "x86_64", schedule
    scheduled_job(farm, schedule["id"], after=after)
    farm.cli("schedule", "delete", str(schedule["id"]))
    # It may have fired twice before it was deleted: the runner takes the latest.
    jobs = [j for j in farm.get("/api/v1/jobs", params={"tag": f"schedule:{schedule['id']}"}
                                ).json()["jobs"] if j["id"] > after]
    ended = [wait_job(farm, j["id"], {"success", "failed"}, seconds=240) for j in jobs]
    for job in ended:
        assert job["status"] == "success", job_logs(farm, job)
    return max(ended, key=lambda j: int(j["id"]))


def test_a_runner_installs_a_scheduled_build_itself_and_refuses_a_corrupt_one(
        tmp_path: Path) -> None:
    old, new = bootable_image(tmp_path, "1"), bootable_image(tmp_path, "2")
    recipes, image = tiny_catalogue(tmp_path, new, TINY_FUNCTIONS)
    recipe = images.find(recipes, "tiny/1")
    # The embedded runner: demo/latest (the build job) in bwrap, tiny/1 in a VM; image
    # updates are on by default, checked against the tiny recipes.
    farm = RunningFarm(tmp_path / "data", free_port(), extra_env={
        "NIXFARM_JOBS__EMBEDDED_RUNNER_SANDBOX": "bwrap,vm",
        "NIXFARM_JOBS__EMBEDDED_RUNNER_IMAGE_RECIPES": str(recipes)})
    farm.start()
    try:
        # The first image, installed by hand (as builds.sr.ht's first one is).
        first = tmp_path / "first"
        first.mkdir()
        shutil.copy(old, first / images.DISK_FILE)
        farm.cli("image", "install", "tiny/1", "--recipes", str(recipes), "--no-check",
                 "--from", str(first), "--work-dir", str(tmp_path / "data/runner"))
        wait_runner_build(farm, "built on this machine")
        assert tiny_version(farm) == "1"

        # A job that booted the old image keeps it while the new one is installed.
        running = farm.request("POST", "/api/v1/jobs", json={"manifest": (
            "image: tiny/1\ntasks:\n  - long: |\n      cat /etc/tiny-version\n"
            "      sleep 90\n      cat /etc/tiny-version\n")}).json()
        deadline = time.monotonic() + 300
        while farm.get(f"/api/v1/jobs/{running['id']}").json()["tasks"][0]["status"] == (
                "pending"):
            assert time.monotonic() < deadline, "the long job never started its task"
            time.sleep(0.3)

        # A rebuild: the runner fetches it, checks it, boots it and installs it.
        manifest = farm.cli("image", "manifest", "tiny/1", "--recipes", str(recipes)).stdout
        built = rebuild_once(farm, manifest)
        assert {a["name"]: a["sha256"] for a in built["artifacts"]}["root.img.qcow2"] == (
            hashlib.sha256(image).hexdigest())
        said = wait_runner_build(farm, f"build of job {built['id']}")
        assert "refused" not in said["tiny/1 (x86_64)"], said
        assert farm.get(f"/api/v1/jobs/{running['id']}").json()["status"] == "running"
        log = farm.log.read_text()
        assert f"image tiny/1 (x86_64): installed the build of job {built['id']}" in log
        assert "image check tiny/1 (x86_64): tiny build 2" in log  # its sanity_check ran
        place = runner_dir(tmp_path / "data/runner") / "images/tiny/1/x86_64"
        assert (place / images.DISK_FILE).read_bytes() == image
        assert (place / images.HASH_FILE).read_text() == images.recipe_hash(recipe) + "\n"
        assert tiny_version(farm) == "2"  # the next job boots the new image
        running = wait_job(farm, running["id"], {"success", "failed"}, seconds=300)
        log_lines = job_logs(farm, running)[1][0].split()
        assert running["status"] == "success", job_logs(farm, running)
        assert [x for x in log_lines if x.isdigit() and x != "90"] == ["1", "1"], log_lines

        # A build whose image is broken (same recipe): refused, the old image stays.
        corrupt = manifest.replace("environment:\n", "environment:\n  corrupt: 'yes'\n", 1)
        assert corrupt != manifest
        bad = rebuild_once(farm, corrupt, after=built["id"])
        said = wait_runner_build(farm, f"job {bad['id']} refused")
        assert f"build of job {built['id']}" in said["tiny/1 (x86_64)"], said
        assert "The sanity check of tiny/1" in said["tiny/1 (x86_64)"] or (
            "Checking tiny/1" in said["tiny/1 (x86_64)"]), said
        assert (place / images.DISK_FILE).read_bytes() == image
        assert f"the build of job {bad['id']} is refused" in farm.log.read_text()
        assert tiny_version(farm) == "2"
    finally:
        farm.stop()
