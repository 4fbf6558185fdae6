"""The job service and the runner service on SQLite and PostgreSQL: lifecycle, claims,
leases, time limits, cancelling, following."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import anyio
import pytest
import sqlalchemy as sa

from nixfarm.builds.runners import RECHECK, RECHECK_COMPLETE
from nixfarm.builds.services import BuildServices
from nixfarm.db.engine import Database
from nixfarm.db.models import Job
from nixfarm.errors import Conflict, Forbidden, InvalidInput, NotFound
from nixfarm.manifest.errors import ManifestError
from nixfarm.tokens import Principal
from nixfarm.wire.jobs import JobSubmit
from nixfarm.wire.runners import Assignment, FinishRequest, RunnerRegister, TaskReport
from tests.builds.conftest import MakeBuilds, principal

T = TypeVar("T")

pytestmark = pytest.mark.anyio

MANIFEST = """\
image: alpine/edge
tasks:
  - build: make
  - test: make check
"""


async def setup(db: Database, builds: BuildServices,
                ) -> tuple[Principal, Principal, int]:
    user = await principal(db, "user", "jobs:submit")
    runner_token = await principal(db, "runner", "runner")
    runner = await builds.runners.register(
        runner_token, RunnerRegister(name="r1", images=["alpine/edge"]))
    return user, runner_token, runner.id


async def test_lifecycle(db: Database, make_builds: MakeBuilds) -> None:
    builds = make_builds()
    user, rt, rid = await setup(db, builds)
    job = await builds.jobs.submit(user, JobSubmit(manifest=MANIFEST, tags=["a"], note="n"))
    assert job.status == "queued" and [t.status for t in job.tasks] == ["pending"] * 2
    assignment = await builds.runners.claim(rt, rid, wait=0)
    assert assignment is not None and assignment.job_id == job.id
    assert assignment.tasks == ["build", "test"] and assignment.attempt == 1
    assert await builds.runners.claim(rt, rid, wait=0) is None
    await builds.runners.report_task(rt, rid, job.id, "build", TaskReport(status="running"))
    await builds.runners.log(rt, rid, job.id, "build", 0, b"hello\n")
    await builds.runners.report_task(rt, rid, job.id, "build",
                                       TaskReport(status="success", exit_code=0))
    # complete-build: success with a task left; it is skipped.
    done = await builds.runners.finish(rt, rid, job.id, FinishRequest(status="success"))
    assert done.status == "success" and done.runner == "r1"
    assert [t.status for t in done.tasks] == ["success", "skipped"]
    where = await builds.logs.locate(job.id, "build", 0, None)
    assert b"".join([c async for c in builds.logs.stream(where)]) == b"hello\n"
    with pytest.raises(Conflict):  # the job is over: the runner holds it no more
        await builds.runners.heartbeat(rt, rid, job.id, 0)
    page = await builds.jobs.search(user, tag="a")
    assert [j.id for j in page.jobs] == [job.id]
    assert (await builds.jobs.search(user, tag="b")).jobs == []


async def test_only_one_runner_wins_a_job(db: Database, make_builds: MakeBuilds) -> None:
    builds = make_builds()
    user, rt, rid = await setup(db, builds)
    other = await builds.runners.register(rt, RunnerRegister(name="r2", images=["alpine/edge"]))
    job = await builds.jobs.submit(user, JobSubmit(manifest=MANIFEST))
    won = []

    async def claim(runner_id: int) -> None:
        won.append(await builds.runners.claim(rt, runner_id, wait=0.3))

    async with anyio.create_task_group() as tg:
        for runner_id in (rid, other.id, rid, other.id):
            tg.start_soon(claim, runner_id)
    assert [a.job_id for a in won if a is not None] == [job.id]


async def test_jobs_for_other_images_do_not_hide_a_runners_jobs(
        db: Database, make_builds: MakeBuilds) -> None:
    builds = make_builds()
    user, rt, rid = await setup(db, builds)
    await builds.runners.register(rt, RunnerRegister(name="r2", images=["debian/12"]))
    other = MANIFEST.replace("alpine/edge", "debian/12")
    for _ in range(30):  # more than a claim looks at in one go
        await builds.jobs.submit(user, JobSubmit(manifest=other))
    mine = await builds.jobs.submit(user, JobSubmit(manifest=MANIFEST))
    assignment = await builds.runners.claim(rt, rid, wait=0)
    assert assignment is not None and assignment.job_id == mine.id


async def claim_across(builds: BuildServices, rt: Principal, rid: int,
                       meanwhile: Callable[[], Awaitable[T]], wait: float = 30
                       ) -> tuple[Assignment | None, T, float]:
    """A long-poll that is waiting when ``meanwhile`` runs: what it took, what
    ``meanwhile`` returned, and the seconds from then until the long-poll ended."""
    got: list[Assignment | None] = []

    async def claim() -> None:
        got.append(await builds.runners.claim(rt, rid, wait=wait))

    async with anyio.create_task_group() as tg:
        tg.start_soon(claim)
        await anyio.sleep(0.3)
        assert not got, "the long-poll ended before anything was done"
        start = anyio.current_time()
        result = await meanwhile()
    return got[0], result, anyio.current_time() - start


async def test_claim_waits_for_a_submit(db: Database, make_builds: MakeBuilds) -> None:
    builds = make_builds()
    user, rt, rid = await setup(db, builds)
    took, job, seconds = await claim_across(
        builds, rt, rid, lambda: builds.jobs.submit(user, JobSubmit(manifest=MANIFEST)),
        wait=10)
    assert took is not None and took.job_id == job.id
    assert seconds < 1.0


async def test_lost_runner_requeues_once_then_fails(db: Database,
                                                   make_builds: MakeBuilds) -> None:
    builds = make_builds(lease_seconds=0.2)
    user, rt, rid = await setup(db, builds)
    job = await builds.jobs.submit(user, JobSubmit(manifest=MANIFEST))
    assert await builds.runners.claim(rt, rid, wait=0) is not None
    await anyio.sleep(0.3)
    assert await builds.runners.reap() == []
    assert (await builds.jobs.get(user, job.id)).status == "queued"
    second = await builds.runners.claim(rt, rid, wait=0)
    assert second is not None and second.attempt == 2
    await builds.runners.report_task(rt, rid, job.id, "build", TaskReport(status="running"))
    await anyio.sleep(0.3)
    assert await builds.runners.reap() == [job.id]
    lost = await builds.jobs.get(user, job.id)
    assert (lost.status, lost.reason) == ("failed", "runner lost")
    assert [t.status for t in lost.tasks] == ["failed", "skipped"]


async def test_time_limit(db: Database, make_builds: MakeBuilds) -> None:
    builds = make_builds(timeout_minutes=0.005)  # 0.3 s
    user, rt, rid = await setup(db, builds)
    job = await builds.jobs.submit(user, JobSubmit(manifest=MANIFEST))
    await builds.runners.claim(rt, rid, wait=0)
    await anyio.sleep(0.4)
    assert await builds.runners.reap() == [job.id]
    beat = await builds.runners.heartbeat(rt, rid, job.id, 0)
    assert beat.stop and beat.reason == "timeout"
    assert (await builds.jobs.get(user, job.id)).status == "timeout"


async def test_cancel_wakes_the_heartbeat(db: Database, make_builds: MakeBuilds) -> None:
    builds = make_builds(lease_seconds=30)
    user, rt, rid = await setup(db, builds)
    job = await builds.jobs.submit(user, JobSubmit(manifest=MANIFEST))
    await builds.runners.claim(rt, rid, wait=0)
    answers = []

    async def beat() -> None:
        answers.append(await builds.runners.heartbeat(rt, rid, job.id, wait=10))

    async with anyio.create_task_group() as tg:
        tg.start_soon(beat)
        await anyio.sleep(0.2)
        start = anyio.current_time()
        assert (await builds.jobs.cancel(user, job.id)).status == "cancelled"
    assert answers[0].stop and answers[0].reason == "cancelled"
    assert anyio.current_time() - start < 1.0
    with pytest.raises(Conflict):
        await builds.jobs.cancel(user, job.id)


async def test_who_may_do_what(db: Database, make_builds: MakeBuilds) -> None:
    builds = make_builds()
    user, _, rid = await setup(db, builds)
    stranger = await principal(db, "stranger", "jobs:submit")
    private = await builds.jobs.submit(user, JobSubmit(manifest=MANIFEST, visibility="private",
                                                       execute=False))
    with pytest.raises(NotFound):
        await builds.jobs.get(stranger, private.id)
    with pytest.raises(NotFound):
        await builds.jobs.get(None, private.id)
    public = await builds.jobs.submit(user, JobSubmit(manifest=MANIFEST, visibility="public",
                                                      execute=False))
    assert (await builds.jobs.get(None, public.id)).id == public.id
    with pytest.raises(Forbidden):
        await builds.jobs.cancel(stranger, public.id)
    assert [j.id for j in (await builds.jobs.search(stranger)).jobs] == [public.id]
    assert (await builds.jobs.start(user, public.id)).status == "queued"
    with pytest.raises(Conflict):
        await builds.jobs.start(user, public.id)
    # Another token's runner cannot act as this one.
    other = await principal(db, "other runner", "runner")
    with pytest.raises(Forbidden):
        await builds.runners.claim(other, rid, wait=0)
    with pytest.raises(InvalidInput, match="oauth"):
        await builds.jobs.submit(user, JobSubmit(manifest=MANIFEST + "oauth: x\n"))


async def test_follow_replays_then_streams(db: Database, make_builds: MakeBuilds) -> None:
    builds = make_builds()
    user, rt, rid = await setup(db, builds)
    job = await builds.jobs.submit(user, JobSubmit(manifest=MANIFEST))
    await builds.runners.claim(rt, rid, wait=0)
    await builds.runners.log(rt, rid, job.id, None, 0, b"booting\n")
    seen: list[tuple[str, dict[str, object]]] = []

    async def follow() -> None:
        async for event in builds.jobs.follow(user, job.id):
            seen.append(event)

    async with anyio.create_task_group() as tg:
        tg.start_soon(follow)
        await anyio.sleep(0.1)
        await builds.runners.log(rt, rid, job.id, None, 0, b"booting\n")  # a retry
        await builds.runners.log(rt, rid, job.id, "build", 0, b"compiling\n")
        await builds.runners.finish(rt, rid, job.id, FinishRequest(status="failed"))
    logs = [(e["task"], e["text"]) for kind, e in seen if kind == "log"]
    assert logs == [(None, "booting\n"), ("build", "compiling\n")]
    assert seen[-1] == ("end", {"status": "failed"})


async def test_groups(db: Database, make_builds: MakeBuilds) -> None:
    from nixfarm.wire.jobs import JobGroupCreate

    builds = make_builds()
    user, _, _ = await setup(db, builds)
    a = await builds.jobs.submit(user, JobSubmit(manifest=MANIFEST, execute=False))
    b = await builds.jobs.submit(user, JobSubmit(manifest=MANIFEST, execute=False))
    group = await builds.jobs.create_group(user, JobGroupCreate(job_ids=[a.id, b.id],
                                                                execute=False))
    assert [j.status for j in group.jobs] == ["pending", "pending"]
    started = await builds.jobs.start_group(user, group.id)
    assert [j.status for j in started.jobs] == ["queued", "queued"]
    async with db.session() as s:
        assert await s.scalar(sa.select(sa.func.count()).select_from(Job).where(
            Job.group_id == group.id)) == 2


async def test_image_nix_needs_a_package_source_or_a_runner_that_brings_one(
        db: Database, make_builds: MakeBuilds, tmp_path: Path) -> None:
    nix_job = JobSubmit(manifest="image: nix\npackages: [hello]\ntasks:\n  - t: hello\n")
    without = make_builds()
    user = await principal(db, "user", "jobs:submit")
    with pytest.raises(ManifestError, match=r"image 'nix' is not available on this server"):
        await without.jobs.submit(user, nix_job)
    with_source = make_builds(registry={"source": {"kind": "path", "location": str(tmp_path)}})
    assert (await with_source.jobs.submit(user, nix_job)).image == "nix"
    runner_token = await principal(db, "runner", "runner")
    await without.runners.register(runner_token, RunnerRegister(name="r", images=["nix"]))
    assert (await without.jobs.submit(user, nix_job)).image == "nix"


async def test_a_job_queued_by_another_server_is_claimed_within_a_second_or_two(
        db: Database, make_builds: MakeBuilds) -> None:
    # Two servers on one database, each with its own in-process bus: the submit on
    # one does not wake the other's long-poll, its look at the queue finds the job.
    here, there = make_builds(), make_builds()
    user, rt, rid = await setup(db, here)
    took, job, seconds = await claim_across(
        here, rt, rid, lambda: there.jobs.submit(user, JobSubmit(manifest=MANIFEST)))
    assert took is not None and took.job_id == job.id
    assert seconds < RECHECK + 1.0


async def test_an_open_long_poll_takes_a_job_of_an_image_its_runner_adds(
        db: Database, make_builds: MakeBuilds) -> None:
    # The farm's only server (its bus reaches every submit): the long-poll looks at
    # the queue only every RECHECK_COMPLETE seconds by itself; the runner's offering
    # anew wakes it, with the images it offers now.
    builds = make_builds(complete=True)
    user, rt, rid = await setup(db, builds)
    # (Another runner, not claiming now, offers the image: the job is accepted.)
    await builds.runners.register(await principal(db, "other", "runner"),
                                  RunnerRegister(name="r2", images=["debian/stable"]))
    debian = await builds.jobs.submit(user, JobSubmit(
        manifest=MANIFEST.replace("alpine/edge", "debian/stable")))
    took, _, seconds = await claim_across(builds, rt, rid, lambda: builds.runners.register(
        rt, RunnerRegister(name="r1", images=["alpine/edge", "debian/stable"], refresh=True)))
    assert took is not None and took.job_id == debian.id
    assert seconds < RECHECK_COMPLETE / 2


async def test_a_runner_offering_anew_keeps_its_jobs_and_gets_the_new_images(
        db: Database, make_builds: MakeBuilds) -> None:
    """``refresh``: an image installed while the runner runs (docs/images.md); a plain
    registration is a restart, which ends the jobs it held."""
    builds = make_builds()
    user, rt, rid = await setup(db, builds)
    job = await builds.jobs.submit(user, JobSubmit(manifest=MANIFEST))
    assert (await builds.runners.claim(rt, rid, wait=0)) is not None
    again = await builds.runners.register(rt, RunnerRegister(
        name="r1", images=["alpine/edge", "debian/stable"], sandboxes=["bwrap", "vm"],
        refresh=True))
    assert again.id == rid and again.images == ["alpine/edge", "debian/stable"]
    assert again.sandboxes == ["bwrap", "vm"]
    assert (await builds.jobs.view(job.id)).status == "running"
    debian = await builds.jobs.submit(user, JobSubmit(
        manifest=MANIFEST.replace("alpine/edge", "debian/stable")))
    assignment = await builds.runners.claim(rt, rid, wait=0)
    assert assignment is not None and assignment.job_id == debian.id
    await builds.runners.register(rt, RunnerRegister(name="r1", images=["alpine/edge"]))
    assert (await builds.jobs.view(job.id)).status != "running"
