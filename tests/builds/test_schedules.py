"""Scheduled jobs on SQLite and PostgreSQL: the clock is moved by the test, the database
and the job service are real. Two services on one database stand for two servers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import pytest
import sqlalchemy as sa

from nixfarm.builds.schedules import ScheduleService, due_slot, parse_cron
from nixfarm.db.engine import Database
from nixfarm.db.models import Job
from nixfarm.errors import InvalidInput, NotFound
from nixfarm.manifest.errors import ManifestError
from nixfarm.tokens import TokenService
from nixfarm.wire.schedules import ScheduleCreate
from tests.builds.conftest import MakeBuilds, principal

pytestmark = pytest.mark.anyio

MANIFEST = "image: alpine/edge\ntasks:\n  - build: make\n"
START = datetime(2026, 12, 3, 2, 59, 30, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def jobs_of(db: Database) -> list[Job]:
    async with db.session() as s:
        return list(await s.scalars(sa.select(Job).order_by(Job.id)))


def test_cron_expressions_are_checked() -> None:
    assert parse_cron(" 0  3 * * * ") == "0 3 * * *"
    assert parse_cron("* * * * * */5") == "* * * * * */5"
    for bad, why in (("0 3 * *", "has 4 fields"), ("* * * * * * *", "has 7 fields"),
                     ("61 3 * * *", "not a valid"), ("a b c d e", "not a valid"),
                     ("0 0 31 2 *", "no time that ever comes")):
        with pytest.raises(InvalidInput, match=why):
            parse_cron(bad)
    at = datetime(2026, 1, 1, 3, 0, tzinfo=UTC)
    assert due_slot("0 3 * * *", at) == at  # a slot is due at its own moment
    assert due_slot("0 3 * * *", at - timedelta(seconds=1)) == at - timedelta(days=1)


async def test_fires_once_per_slot_with_two_servers(db: Database, make_builds: MakeBuilds
                                                    ) -> None:
    clock = Clock(START)
    builds = make_builds()
    one = ScheduleService(builds.jobs, TokenService(db), clock)
    two = ScheduleService(make_builds().jobs, TokenService(db), clock)
    user = await principal(db, "user", "jobs:submit")
    made = await one.create(user, ScheduleCreate(cron="0 3 * * *", manifest=MANIFEST,
                                                 note="nightly"))
    assert made.next_at == datetime(2026, 12, 3, 3, 0, tzinfo=UTC)
    # Before the slot: nothing, however often the servers look.
    assert await one.tick() == [] and await two.tick() == []
    clock.now = datetime(2026, 12, 3, 3, 0, 0, tzinfo=UTC)
    # Both servers tick at once, many times: one job.
    async with anyio.create_task_group() as group:
        for service in (one, two, one, two):
            group.start_soon(service.tick)
    jobs = await jobs_of(db)
    assert len(jobs) == 1 and jobs[0].owner_name == "user" and jobs[0].note == "nightly"
    assert jobs[0].status == "queued"
    listed = await two.all(user)
    assert listed[0].last_job_id == jobs[0].id
    assert listed[0].next_at == datetime(2026, 12, 4, 3, 0, tzinfo=UTC)
    clock.now += timedelta(hours=5)
    assert await one.tick() == [] and await two.tick() == []
    clock.now = datetime(2026, 12, 4, 3, 0, 1, tzinfo=UTC)
    assert len(await two.tick()) == 1 and await one.tick() == []
    assert len(await jobs_of(db)) == 2


async def test_missed_slots_fire_once_at_start(db: Database, make_builds: MakeBuilds) -> None:
    clock = Clock(START)
    builds = make_builds()
    user = await principal(db, "user", "jobs:submit")
    await ScheduleService(builds.jobs, TokenService(db), clock).create(
        user, ScheduleCreate(cron="* * * * * */10", manifest=MANIFEST))
    # The farm is "down" for three days (dozens of thousands of slots); a server that
    # starts then fires the schedule once, for the latest slot.
    clock.now = START + timedelta(days=3, seconds=5)
    restarted = ScheduleService(make_builds().jobs, TokenService(db), clock)
    assert len(await restarted.tick()) == 1
    assert await restarted.tick() == []
    (schedule,) = await restarted.all(user)
    assert schedule.last_slot == START + timedelta(days=3)
    clock.now += timedelta(seconds=5)
    assert len(await restarted.tick()) == 1


async def test_owners_manifests_and_revoked_tokens(db: Database, make_builds: MakeBuilds
                                                   ) -> None:
    clock = Clock(START)
    builds = make_builds()
    tokens = TokenService(db)
    service = ScheduleService(builds.jobs, tokens, clock)
    user = await principal(db, "user", "jobs:submit")
    other = await principal(db, "other", "jobs:submit")
    admin = await principal(db, "root", "admin")
    with pytest.raises(ManifestError, match="not available"):
        await service.create(user, ScheduleCreate(cron="0 3 * * *",
                                                  manifest="image: nope\ntasks:\n - a: b\n"))
    with pytest.raises(InvalidInput, match="cron"):
        await service.create(user, ScheduleCreate(cron="every day", manifest=MANIFEST))
    mine = await service.create(user, ScheduleCreate(cron="0 3 * * *", manifest=MANIFEST))
    theirs = await service.create(other, ScheduleCreate(cron="0 4 * * *", manifest=MANIFEST))
    assert [s.id for s in await service.all(user)] == [mine.id]
    assert {s.id for s in await service.all(admin)} == {mine.id, theirs.id}
    with pytest.raises(NotFound):
        await service.delete(user, theirs.id)
    # A revoked token's schedule makes no job, and says why.
    await tokens.revoke(other.token_id)
    clock.now = datetime(2026, 12, 3, 4, 0, tzinfo=UTC)
    fresh = ScheduleService(make_builds().jobs, TokenService(db), clock)
    made = await fresh.tick()
    assert len(made) == 1  # user's 03:00 slot (missed) fired; other's made nothing
    (failed,) = [s for s in await fresh.all(admin) if s.id == theirs.id]
    assert failed.last_job_id is None and failed.last_error is not None
    assert "revoked" in failed.last_error
    assert (await service.delete(admin, theirs.id)).id == theirs.id
    assert [s.id for s in await service.all(admin)] == [mine.id]


class CountedPasses(ScheduleService):
    """The real service on the real clock, counting its passes over the schedules."""

    passes = 0

    async def _pass(self) -> tuple[list[int], datetime | None]:
        self.passes += 1
        return await super()._pass()


async def test_sleeps_until_the_next_slot_or_a_change(db: Database, make_builds: MakeBuilds
                                                      ) -> None:
    builds = make_builds()
    user = await principal(db, "user", "jobs:submit")
    service = CountedPasses(builds.jobs, TokenService(db))
    async with anyio.create_task_group() as group:
        group.start_soon(service.run_forever)
        await anyio.sleep(3)
        # No schedule: one pass, then asleep (it used to pass every second).
        assert service.passes == 1
        # A new schedule wakes it at once, and it sleeps until each slot (every 5 s).
        await service.create(user, ScheduleCreate(cron="* * * * * */5", manifest=MANIFEST))
        for _ in range(600):  # its first slot, within 5 s; a loaded machine is slow
            if await jobs_of(db):
                break
            await anyio.sleep(0.1)
        assert await jobs_of(db), "the new schedule's first slot made no job in 60 s"
        woken = service.passes
        await anyio.sleep(11)
        jobs = await jobs_of(db)
        assert len(jobs) >= 2, [j.note for j in jobs]  # the next slots fired too
        assert service.passes - woken <= 4, service.passes  # not one per second: 11
        group.cancel_scope.cancel()
