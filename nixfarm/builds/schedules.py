"""Scheduled jobs: a manifest the server submits at each slot of a cron expression.

The expression is cron's five fields (minute hour day-of-month month day-of-week, UTC),
read by croniter; a sixth field, seconds, may follow (handy for tests, and for jobs
more frequent than a minute).

Firing. Every server runs ``run_forever``, which at each pass (``tick``) looks at
each schedule's *due slot*: the latest slot at or before now. When it is later than
the schedule's ``last_slot``, the server claims it with one conditional UPDATE
(``SET last_slot = due WHERE last_slot < due``): of several servers, exactly one
changes the row, and only that one submits the job. A slot fires at most once.

Sleeping. Between passes a server sleeps until the earliest next slot of any schedule,
or until a schedule is created or deleted (bus topic ``schedules.changed``), and at
most ``LONGEST_SLEEP``: a server that missed a wake-up (a schedule created on another
server of a farm without Redis) still sees it within that. An idle farm thus neither
wakes nor queries every second.

Missed slots. A farm that was down over one or more slots finds, when it starts,
that the due slot is past ``last_slot``: it fires once (for the latest missed slot),
not once per missed slot. A new schedule starts with ``last_slot`` at the slot before
its creation, so it first fires at its next slot.

The job is submitted as the token that created the schedule, with that token's
rights at the time of firing: a revoked token, or a manifest the server no longer
accepts, makes no job, and ``last_error`` says why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import sqlalchemy as sa
from croniter import CroniterError, croniter

from nixfarm.builds.jobs import JobService, is_admin
from nixfarm.db.models import Schedule, utcnow
from nixfarm.errors import Forbidden, InvalidInput, NixfarmError, NotFound
from nixfarm.tokens import Principal, TokenService
from nixfarm.wire.jobs import JobSubmit
from nixfarm.wire.schedules import ScheduleCreate, ScheduleOut

log = logging.getLogger("nixfarm.builds.schedules")

#: What a scheduled job is tagged with: ``schedule:<id>``.
TAG = "schedule"
#: Published when a schedule is created or deleted: the servers' sleeps end.
CHANGED_TOPIC = "schedules.changed"
#: The longest a server sleeps between passes, whatever the next slot.
LONGEST_SLEEP = 60.0
#: After a failed pass (a database restart), the next one comes this soon.
RETRY_SLEEP = 1.0


def parse_cron(expression: str) -> str:
    """The expression, normalised; InvalidInput naming what is wrong."""
    fields = expression.split()
    if len(fields) not in (5, 6):
        raise InvalidInput(
            f"cron {expression!r} has {len(fields)} fields; give 5 (minute hour day month "
            "weekday) or 6 (the same, then seconds)", field="cron")
    text = " ".join(fields)
    if not croniter.is_valid(text):
        raise InvalidInput(f"cron {expression!r} is not a valid cron expression",
                           field="cron")
    try:  # valid, but maybe never due (February 31st)
        next_slot(text, utcnow())
    except (CroniterError, ValueError):
        raise InvalidInput(f"cron {expression!r} names no time that ever comes",
                           field="cron") from None
    return text


def _image_name(image: str) -> None:
    """InvalidInput unless ``image`` looks like a catalogue image, ``distro/release``."""
    distro, _, release = image.partition("/")
    if not distro or not release or "/" in release or not image.isprintable() or " " in image:
        raise InvalidInput(f"image {image!r} is not a catalogue image (distro/release)",
                           field="image")


def due_slot(cron: str, now: datetime) -> datetime:
    """The latest slot of ``cron`` at or before ``now``."""
    slot: datetime = croniter(cron, now + timedelta(microseconds=1)).get_prev(datetime)
    return slot


def next_slot(cron: str, now: datetime) -> datetime:
    """The first slot of ``cron`` after ``now``."""
    slot: datetime = croniter(cron, now).get_next(datetime)
    return slot


class ScheduleService:
    def __init__(self, jobs: JobService, tokens: TokenService,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.jobs = jobs
        self.db = jobs.db
        self.tokens = tokens
        #: The time (tests move it; the database is real).
        self.clock = clock

    def _out(self, s: Schedule) -> ScheduleOut:
        return ScheduleOut(id=s.id, cron=s.cron, note=s.note, owner=s.owner_name,
                           created_at=s.created_at, last_slot=s.last_slot,
                           next_at=next_slot(s.cron, max(s.last_slot, self.clock())),
                           last_job_id=s.last_job_id, last_error=s.last_error,
                           image=s.image, arch=s.image_arch)

    async def create(self, who: Principal, body: ScheduleCreate) -> ScheduleOut:
        cron = parse_cron(body.cron)
        if body.image is not None:
            _image_name(body.image)
            if not is_admin(who):
                # Runners install what an image rebuild's jobs leave: only an admin may
                # make one (a jobs:submit token could otherwise ship any disk image).
                raise Forbidden("Only an admin may schedule an image rebuild (runners "
                                "install what its jobs build).")
        await self.jobs.check(who, body.manifest)  # refused now, not at 3 in the morning
        now = self.clock()
        async with self.db.session() as s:
            schedule = Schedule(owner_id=who.token_id, owner_name=who.name, cron=cron,
                                manifest=body.manifest, note=body.note,
                                last_slot=due_slot(cron, now), created_at=now,
                                image=body.image,
                                image_arch=body.arch if body.image is not None else None)
            s.add(schedule)
            await s.flush()
            out = self._out(schedule)
        log.info("schedule %d (%s) created by %s", out.id, cron, who.name)
        await self.jobs.bus.publish(CHANGED_TOPIC, str(out.id).encode())
        return out

    async def all(self, who: Principal) -> list[ScheduleOut]:
        """The caller's schedules (an admin's: everyone's)."""
        async with self.db.session() as s:
            stmt = sa.select(Schedule).order_by(Schedule.id)
            if not is_admin(who):
                stmt = stmt.where(Schedule.owner_id == who.token_id)
            return [self._out(x) for x in await s.scalars(stmt)]

    async def delete(self, who: Principal, schedule_id: int) -> ScheduleOut:
        async with self.db.session() as s:
            schedule = await s.get(Schedule, schedule_id)
            if schedule is None or not (is_admin(who) or schedule.owner_id == who.token_id):
                # Another's schedule is not revealed to exist.
                raise NotFound(f"There is no schedule {schedule_id}.", kind="schedule",
                               name=str(schedule_id))
            out = self._out(schedule)
            await s.delete(schedule)
        await self.jobs.bus.publish(CHANGED_TOPIC, str(out.id).encode())
        return out

    async def tick(self) -> list[int]:
        """Fire every schedule whose due slot is unclaimed; the ids of the jobs made."""
        made, _ = await self._pass()
        return made

    async def _pass(self) -> tuple[list[int], datetime | None]:
        """``tick``, and the earliest next slot of any schedule (None: no schedule)."""
        now = self.clock()
        async with self.db.session() as s:
            schedules = list(await s.scalars(sa.select(Schedule).order_by(Schedule.id)))
        made = []
        for schedule in schedules:
            due = due_slot(schedule.cron, now)
            if due <= schedule.last_slot:
                continue
            async with self.db.session() as s:
                result = await s.execute(
                    sa.update(Schedule)
                    .where(Schedule.id == schedule.id, Schedule.last_slot < due)
                    .values(last_slot=due)
                    .execution_options(synchronize_session=False))
                claimed = result.rowcount == 1  # type: ignore[attr-defined]
            if not claimed:
                continue  # another server fired this slot
            job_id, error = await self._submit(schedule, due)
            async with self.db.session() as s:
                await s.execute(
                    sa.update(Schedule).where(Schedule.id == schedule.id)
                    .values(last_job_id=job_id, last_error=error)
                    .execution_options(synchronize_session=False))
            if job_id is not None:
                made.append(job_id)
        upcoming = [next_slot(x.cron, now) for x in schedules]
        return made, min(upcoming, default=None)

    async def _submit(self, schedule: Schedule, slot: datetime) -> tuple[int | None, str | None]:
        who = await self.tokens.by_id(schedule.owner_id)
        if who is None:
            error = "the token that created the schedule is revoked or expired"
            log.warning("schedule %d: slot %s made no job: %s", schedule.id, slot, error)
            return None, error
        body = JobSubmit(manifest=schedule.manifest, tags=[f"{TAG}:{schedule.id}"],
                         note=schedule.note or f"schedule {schedule.id} ({schedule.cron}), "
                                               f"slot {slot:%Y-%m-%d %H:%M:%S} UTC")
        rebuilds = None
        if schedule.image is not None:
            if not is_admin(who):  # (its token was made an admin's; checked again)
                error = "an image rebuild's jobs are submitted by an admin's token only"
                log.warning("schedule %d: slot %s made no job: %s", schedule.id, slot, error)
                return None, error
            rebuilds = (schedule.image, schedule.image_arch or "x86_64")
        try:
            job = await self.jobs.submit(who, body, rebuilds=rebuilds)
        except NixfarmError as e:
            log.warning("schedule %d: slot %s made no job: %s", schedule.id, slot, e.message)
            return None, e.message
        log.info("schedule %d: slot %s submitted job %d", schedule.id, slot, job.id)
        return job.id, None

    async def run_forever(self) -> None:
        """Pass, then sleep until the next slot or a change (see Sleeping above)."""
        async with self.jobs.bus.subscribe(CHANGED_TOPIC) as changes:
            while True:
                try:
                    _, upcoming = await self._pass()
                    wait = LONGEST_SLEEP if upcoming is None else min(
                        LONGEST_SLEEP, (upcoming - self.clock()).total_seconds())
                except Exception:  # a failing pass (database restart) must not stop the next
                    log.exception("scheduled jobs pass failed")
                    wait = RETRY_SLEEP
                # A change ends the sleep; so does the slot (a few ms late rather than
                # early: a pass just before it would find nothing due and sleep again).
                await changes.get(max(wait, 0.0) + 0.005)
