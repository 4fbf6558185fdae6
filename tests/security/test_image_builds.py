"""Runners install the image builds of the farm's image schedules by themselves
(docs/images.md): a tenant with ``jobs:submit`` must not be able to get an image of
theirs installed. Only a job that an admin's image schedule made is an image build;
a tenant's schedule (with or without ``image``), a job tagged as a schedule's, and
the runner routes with a tenant's token all get nothing.

Checked on the server's answers to a runner (``POST /api/v1/runners/ID/image-builds``
and its artifact route), with an admin's image schedule beside as the control: a
runner sees that one, and only that one.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from tests.fixtures.farm import RunningFarm
from tests.security.conftest import IMAGE, Tenant

ARTIFACTS = "artifacts:\n  - out/root.img.qcow2\n  - out/recipe.sha256\n"
BUILD = {"build": "mkdir out\necho 'an image of mine' > out/root.img.qcow2\n"
                  "echo 0123456789abcdef0123456789abcdef > out/recipe.sha256"}


def manifest() -> str:
    return (IMAGE + ARTIFACTS + "tasks:\n" + "".join(
        f"  - {name}: |\n" + "".join(f"      {line}\n" for line in script.splitlines())
        for name, script in BUILD.items()))


def probe_runner(farm: RunningFarm) -> tuple[str, int]:
    """A runner's token and id, the runner offering tiny/1 (an image it would update)."""
    token = farm.cli("token", "create", "--name", f"probe-{uuid.uuid4().hex[:6]}",
                     "--scope", "runner").stdout.strip()
    r = farm.request("POST", "/api/v1/runners", token, json={
        "name": f"probe-{uuid.uuid4().hex[:6]}", "images": ["tiny/1", "nix"],
        "sandboxes": ["vm"], "refresh": True})
    assert r.status_code == 201, r.text
    return token, int(r.json()["id"])


def builds(farm: RunningFarm, token: str, runner: int) -> list[dict[str, Any]]:
    r = farm.request("POST", f"/api/v1/runners/{runner}/image-builds", token,
                     json={"after": 0, "wait": 0})
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["builds"]
    return found


def tagged_jobs(farm: RunningFarm, schedule: int, token: str, after: int) -> list[int]:
    """Ids of the jobs tagged as ``schedule``'s after job ``after`` (SQLite gives a
    deleted schedule's id to the next one)."""
    jobs = farm.get("/api/v1/jobs", token, params={"tag": f"schedule:{schedule}"}).json()
    return sorted(j["id"] for j in jobs["jobs"] if j["id"] > after)


def fire_once(farm: RunningFarm, schedule: int, token: str, after: int = 0,
              besides: tuple[int, ...] = ()) -> int:
    """Wait for ``schedule``'s first job, delete the schedule, and return the last job
    it made (it may have fired again meanwhile); ``besides``: jobs that only carry its
    tag."""
    deadline = time.monotonic() + 120
    while not [j for j in tagged_jobs(farm, schedule, token, after) if j not in besides]:
        assert time.monotonic() < deadline, f"schedule {schedule} made no job in 120 s"
        time.sleep(0.3)
    farm.request("DELETE", f"/api/v1/schedules/{schedule}", token)
    return [j for j in tagged_jobs(farm, schedule, token, after) if j not in besides][-1]


def test_only_an_admins_image_schedule_makes_builds_runners_install(
        offline_farm: RunningFarm, mallory: Tenant) -> None:
    farm = offline_farm
    token, runner = probe_runner(farm)
    # Mallory cannot make an image schedule at all...
    refused = farm.request("POST", "/api/v1/schedules", mallory.token, json={
        "cron": "* * * * * */2", "manifest": manifest(), "image": "tiny/1"})
    assert refused.status_code == 403, refused.text
    assert "Only an admin may schedule an image rebuild" in refused.text
    # ... her own schedule of the same manifest builds, but is no image build ...
    made = farm.request("POST", "/api/v1/schedules", mallory.token, json={
        "cron": "* * * * * */2", "manifest": manifest()})
    assert made.status_code == 201, made.text
    assert made.json()["image"] is None
    hers = mallory.wait({"id": fire_once(farm, made.json()["id"], mallory.token)})
    assert hers["status"] == "success", mallory.logs(hers)
    # ... and neither is a job she tags as the admin's schedule's.
    admins = farm.request("POST", "/api/v1/schedules", json={
        "cron": "* * * * * */2", "manifest": manifest(), "image": "tiny/1"})
    assert admins.status_code == 201, admins.text
    tagged = mallory.submit(BUILD, ARTIFACTS, tags=[f"schedule:{admins.json()['id']}"])
    last = fire_once(farm, admins.json()["id"], farm.token, after=hers["id"],
                     besides=(tagged["id"],))
    admin = Tenant(farm, "admin", farm.token)  # (reads every job)
    ran = [admin.wait({"id": j}) for j in
           tagged_jobs(farm, admins.json()["id"], farm.token, hers["id"])]
    assert all(j["status"] == "success" for j in ran), [admin.logs(j) for j in ran]
    control = next(j for j in ran if j["id"] == last)
    tagged = next(j for j in ran if j["id"] == tagged["id"])

    found = builds(farm, token, runner)
    assert [(b["image"], b["job_id"]) for b in found] == [("tiny/1", control["id"])], found
    assert {a["name"] for a in found[0]["artifacts"]} == {"root.img.qcow2", "recipe.sha256"}
    assert all(a["sha256"] for a in found[0]["artifacts"]), found
    ok = farm.get(f"/api/v1/runners/{runner}/image-builds/{control['id']}/root.img.qcow2",
                  token)
    assert ok.status_code == 200 and ok.content == b"an image of mine\n", ok.text
    for job in (hers, tagged):
        r = farm.get(f"/api/v1/runners/{runner}/image-builds/{job['id']}/root.img.qcow2",
                     token)
        assert r.status_code == 404, r.text
    # The runner routes are a runner's: her token reaches neither.
    r = farm.request("POST", f"/api/v1/runners/{runner}/image-builds", mallory.token,
                     json={"after": 0, "wait": 0})
    assert r.status_code == 403, r.text
    r = farm.get(f"/api/v1/runners/{runner}/image-builds/{control['id']}/root.img.qcow2",
                 mallory.token)
    assert r.status_code == 403, r.text
