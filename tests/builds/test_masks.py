"""The runner service's per-job log maskers: every way a job ends drops its entry, and
until then the job's log chunks are masked (on SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import pytest

from nixfarm.builds.services import BuildServices
from nixfarm.db.engine import Database
from nixfarm.masking import MASK
from nixfarm.tokens import Principal
from nixfarm.wire.jobs import JobSubmit, SecretCreate
from nixfarm.wire.runners import FinishRequest, RunnerRegister, TaskReport
from tests.builds.conftest import MakeBuilds, principal

pytestmark = pytest.mark.anyio

TOKEN = b"tok-5f2a9c7e41d3"
MANIFEST = """\
image: alpine/edge
secrets:
  - token
tasks:
  - build: cat ~/.token
  - test: make check
"""
LEASE = 0.3


@dataclass
class Running:
    builds: BuildServices
    user: Principal
    runner: Principal
    runner_id: int
    job_id: int

    async def status(self) -> str:
        return (await self.builds.jobs.get(self.user, self.job_id)).status

    async def log(self, seq: int, data: bytes) -> bytes:
        """The task's whole log as stored, after the runner logged ``data``."""
        await self.builds.runners.log(self.runner, self.runner_id, self.job_id, "build",
                                        seq, data)
        where = await self.builds.logs.locate(self.job_id, "build", 0, None)
        return b"".join([c async for c in self.builds.logs.stream(where)])

    async def finish(self, status: str) -> None:
        await self.builds.runners.finish(self.runner, self.runner_id, self.job_id,
                                           FinishRequest.model_validate({"status": status}))

    async def start_task(self) -> None:
        await self.builds.runners.report_task(self.runner, self.runner_id, self.job_id,
                                                "build", TaskReport(status="running"))


async def claimed(db: Database, builds: BuildServices) -> Running:
    """A job with a secret, claimed by a runner: the runner service holds its masker."""
    user = await principal(db, "user", "jobs:submit")
    await builds.secrets.create(user, SecretCreate.model_validate(
        {"name": "token", "kind": "file", "data": base64.b64encode(TOKEN).decode(),
         "path": "~/.token"}))
    job = await builds.jobs.submit(user, JobSubmit(manifest=MANIFEST))
    rt = await principal(db, "runner", "runner")
    runner = await builds.runners.register(rt, RunnerRegister(name="r",
                                                                images=["alpine/edge"]))
    assert await builds.runners.claim(rt, runner.id, wait=0) is not None
    running = Running(builds, user, rt, runner.id, job.id)
    assert job.id in builds.runners._masks
    assert await running.log(0, b"token: " + TOKEN + b"\n") == f"token: {MASK}\n".encode()
    return running


async def finished(job: Running) -> str:
    await job.start_task()
    await job.finish("success")
    return "success"


async def failed(job: Running) -> str:
    await job.start_task()
    await job.finish("failed")
    return "failed"


async def cancelled_then_confirmed(job: Running) -> str:
    await job.builds.jobs.cancel(job.user, job.job_id)
    assert job.job_id in job.builds.runners._masks  # the runner is still stopping
    await job.finish("failed")
    return "cancelled"


async def cancelled_never_confirmed(job: Running) -> str:
    await job.builds.jobs.cancel(job.user, job.job_id)
    await anyio.sleep(LEASE + 0.1)
    await job.builds.runners.reap()
    return "cancelled"


async def lost_and_requeued(job: Running) -> str:
    await anyio.sleep(LEASE + 0.1)
    assert await job.builds.runners.reap() == []
    return "queued"


async def lost_and_failed(job: Running) -> str:
    await job.start_task()
    await anyio.sleep(LEASE + 0.1)
    assert await job.builds.runners.reap() == [job.job_id]
    return "failed"


async def timed_out(job: Running, confirm: bool) -> str:
    await job.start_task()
    # Past the time limit, the lease still renewed.
    await anyio.sleep(LEASE * 0.6)
    await job.builds.runners.heartbeat(job.runner, job.runner_id, job.job_id, 0)
    await anyio.sleep(LEASE * 0.6)
    assert await job.builds.runners.reap() == [job.job_id]
    # The runner is told to stop and still sends logs meanwhile: masked.
    assert job.job_id in job.builds.runners._masks
    assert await job.log(1, TOKEN + b"\n") == f"token: {MASK}\n{MASK}\n".encode()
    if confirm:
        await job.finish("failed")
    else:
        await anyio.sleep(LEASE + 0.1)
        assert await job.builds.runners.reap() == []
    return "timeout"


async def timed_out_then_confirmed(job: Running) -> str:
    return await timed_out(job, confirm=True)


async def timed_out_never_confirmed(job: Running) -> str:
    return await timed_out(job, confirm=False)


ENDINGS: list[Callable[[Running], Awaitable[str]]] = [
    finished, failed, cancelled_then_confirmed, cancelled_never_confirmed,
    lost_and_requeued, lost_and_failed, timed_out_then_confirmed, timed_out_never_confirmed,
]


@pytest.mark.parametrize("ending", ENDINGS, ids=lambda f: f.__name__)
async def test_every_ending_drops_the_masker(db: Database, make_builds: MakeBuilds,
                                             ending: Callable[[Running], Awaitable[str]]
                                             ) -> None:
    # A time limit of 0.3 s: only the time-out endings run that long.
    limit = {"timeout_minutes": LEASE / 60} if ending.__name__.startswith("timed") else {}
    builds = make_builds(lease_seconds=LEASE, **limit)
    job = await claimed(db, builds)
    assert await ending(job) == await job.status()
    assert builds.runners._masks == {}


async def test_a_job_ended_on_another_server_is_dropped(db: Database,
                                                        make_builds: MakeBuilds) -> None:
    here, there = make_builds(), make_builds()
    job = await claimed(db, here)
    # Log chunks reach the other server too (a load balancer): it builds its own masker.
    elsewhere = Running(there, job.user, job.runner, job.runner_id, job.job_id)
    assert await elsewhere.log(1, TOKEN) == f"token: {MASK}\n{MASK}".encode()
    assert job.job_id in there.runners._masks
    assert await there.runners.reap() == []
    assert job.job_id in there.runners._masks  # still running: kept
    await job.finish("success")
    assert here.runners._masks == {}
    assert await there.runners.reap() == []
    assert there.runners._masks == {}
