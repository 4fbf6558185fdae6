"""The autoscaler and the reaper: one pass every ``builders.interval_seconds``.

Each pass, in this order (each step reads the live builders afresh, so a pass that
fails half-way leaves nothing the next one cannot finish; what their runners do, which
of them run a job and when each was last heard, is read once per pass, after step 1:
``BuilderService.activity``):

1. **Look.** Builders whose machine is booting are looked at through their provider
   (this is the polling until ``active``): the address is recorded; a machine that
   is gone is a builder destroyed.
2. **Life cycle.** For every enrolled builder:
   - its job ended: ``destroy-after-job`` destroys it; ``keep-on-failure`` holds it
     for ``hold_seconds`` if the job failed (else destroys it); ``keep-always`` marks
     it idle from the job's end;
   - a hold that is over, or an idle time past ``idle_timeout_seconds``: destroyed;
   - older than ``max_uptime_seconds``, or its pool is no longer configured: it
     drains (claims nothing more) and is destroyed once it runs no job;
   - its job left it without ending (its runner stopped or fell silent, and the job
     was queued again): once ``max_builders_per_job`` builders of the pool lost the
     job that way, the job fails ("give-up") rather than wait for one more builder.
3. **Reap.** Destroyed: builders that never enrolled within ``boot_timeout_seconds``;
   enrolled builders not heard from (no claim, no job lease renewed) for
   ``builders.heartbeat_timeout_seconds``; and instances that carry this farm's tag
   but no live builder of the farm (a create whose answer was lost, a row destroyed
   while the machine's deletion failed, a database restored from a backup).
4. **Scale.** Per pool: demand is the queued jobs the pool takes
   (``builds.poolmatch``); supply is its builders coming up (creating, booting) and
   the ready ones without a job that may still take one. For the difference, one
   builder each, as long as the pool stays within ``max_instances`` and, with
   ``max_hourly_spend``, the plan prices of its live builders plus the new one stay
   within the cap. No demand, no builder: idle timeouts take a pool to zero.
   A pool whose last ``max_boot_failures`` builders in a row failed to come up
   (create refused, never enrolled, machine gone while booting, silent before taking
   a job: ``Builder.boot_failed``) backs off: no builder for ``boot_backoff_seconds``
   after the last failure, doubling with each further one (at most 16 times); then
   one builder at a time, until one comes up ("backoff").

Every create, destroy, reap, drain, hold and refusal is recorded with its reason
(``service.decide``); a refusal is recorded once while it holds, not every pass.

One server of a farm runs the passes at a time: the one holding the lease
``autoscaler`` in the database (``builder_leases``), renewed every pass and good for
three intervals (at least 30 s); when its server stops or dies, another server with
``builders.autoscale`` takes over once the lease has run out. Two servers each making
passes would see the same queue and both create a builder for it.
"""

from __future__ import annotations

import logging
import secrets
from datetime import datetime, timedelta

import anyio
import sqlalchemy as sa

from nixfarm.builders.service import Activity, BuilderService
from nixfarm.builds import poolmatch
from nixfarm.builds.jobs import JobService
from nixfarm.config import PoolSettings
from nixfarm.db import builders as q
from nixfarm.db import jobs as jq
from nixfarm.db.models import Builder, Job, utcnow
from nixfarm.errors import Conflict, ProviderError
from nixfarm.wire.jobs import FINAL_STATUSES

log = logging.getLogger("nixfarm.builders.autoscaler")

#: The lease the autoscaling server holds.
LEASE = "autoscaler"
#: Job statuses that count as the job having failed (keep-on-failure holds for these).
_FAILED = frozenset({"failed", "timeout", "interrupted"})
#: How many of a pool's latest builders the back-off looks at.
_STREAK_LOOK = 100


def _seconds(delta: timedelta) -> str:
    return f"{delta.total_seconds():.0f} s"


class Autoscaler:
    def __init__(self, service: BuilderService, jobs: JobService | None = None) -> None:
        self.service = service
        #: Tells a job's followers and triggers when it gives the job up (None: nobody).
        self.jobs = jobs
        self.settings = service.settings
        self.db = service.db
        #: The refusal last recorded per pool, so that one holding is recorded once.
        self._refused: dict[str, str] = {}
        #: This server's name as a lease holder, and whether it held the lease last.
        self.holder = secrets.token_hex(8)
        self.leads = False

    @property
    def lease(self) -> timedelta:
        return timedelta(seconds=max(30.0, 3 * self.settings.builders.interval_seconds))

    async def lead(self) -> bool:
        """Take or renew the autoscaler's lease; whether this server holds it."""
        async with self.db.session() as s:
            self.leads = await q.take_lease(s, LEASE, self.holder, self.lease)
        return self.leads

    async def resign(self) -> None:
        """Give the lease up (the server stops): another server may take over at once."""
        async with self.db.session() as s:
            await q.drop_lease(s, LEASE, self.holder)
        self.leads = False

    async def run_forever(self) -> None:
        while True:
            try:
                if await self.lead():
                    await self.once()
            except Exception:  # a failing pass (database or provider down) must not stop
                log.exception("builder autoscaler pass failed")
            await anyio.sleep(self.settings.builders.interval_seconds)

    async def once(self) -> None:
        """One whole pass (see the module's notes)."""
        await self.look()
        seen = await self.see()
        await self.life_cycle(seen)
        await self.reap(seen)
        for pool in self.settings.builders.pools:
            await self.scale(pool, seen)

    async def see(self) -> Activity:
        """What the live builders' runners are doing now (once per pass)."""
        async with self.db.session() as s:
            return await self.service.activity(s, await q.live_builders(s))

    async def _destroy(self, builder: Builder, reason: str, action: str = "destroy",
                       boot_failed: bool = False) -> None:
        try:
            await self.service.destroy(builder.id, reason, action, boot_failed)
        except (ProviderError, Conflict):  # recorded; tried again next pass
            log.warning("destroying builder %d failed; trying again next pass", builder.id)

    # --- 1. look -----------------------------------------------------------------

    async def look(self) -> None:
        async with self.db.session() as s:
            booting = [b for b in await q.live_builders(s)
                       if b.instance_id is not None and (b.state == "booting" or b.ip is None)]
        for builder in booting:
            assert builder.instance_id is not None
            try:
                instance = await self.service.provider(builder.provider).get(
                    builder.instance_id)
            except (ProviderError, Conflict) as e:
                log.warning("looking at builder %d failed: %s", builder.id, e.message)
                continue
            if instance is None or instance.state == "gone":
                await self._destroy(builder, f"its machine {builder.instance_id} is gone",
                                    boot_failed=builder.enrolled_at is None)
            elif instance.ip and instance.ip != builder.ip:
                async with self.db.session() as s:
                    await q.update_builder_if(s, builder.id, q.LIVE, ip=instance.ip)

    # --- 2. life cycle -----------------------------------------------------------

    async def life_cycle(self, seen: Activity | None = None) -> None:
        now = utcnow()
        seen = seen or await self.see()
        busy = seen.busy
        async with self.db.session() as s:
            enrolled = [b for b in await q.live_builders(s)
                        if b.state in ("ready", "draining", "held")]
            jobs = {j.id: j for j in await s.scalars(sa.select(Job).where(
                Job.id.in_([b.last_job_id for b in enrolled if b.last_job_id is not None])))}
        for builder in enrolled:
            pool = self.settings.builders.pool(builder.pool)
            job = jobs.get(builder.last_job_id) if builder.last_job_id is not None else None
            # Its job left it: it ended, or was queued again (interrupted, lost).
            ended = job is not None and builder.id not in busy and job.status != "running"
            if builder.state == "held":
                if builder.hold_until is not None and builder.hold_until <= now:
                    await self._destroy(builder, "its hold for inspection is over")
                continue
            if pool is None:
                await self._drain(builder, busy, f"pool {builder.pool} is no longer "
                                  "configured")
                continue
            if builder.state == "draining":
                await self._drain(builder, busy, builder.reason or "it drains")
                continue
            if ended and job is not None and job.status == "queued":
                await self._lost(builder, pool, job)
            if ended and job is not None and await self._job_ended(builder, pool, job, now):
                continue
            if now - builder.created_at > timedelta(seconds=pool.max_uptime_seconds):
                await self._drain(builder, busy, "it has been up longer than max_uptime "
                                  f"({pool.max_uptime_seconds:.0f} s)")
                continue
            idle_since = builder.idle_since or builder.enrolled_at or builder.created_at
            idle = now - idle_since
            if builder.id not in busy and (job is None or ended) \
                    and idle > timedelta(seconds=pool.idle_timeout_seconds):
                await self._destroy(builder, f"idle for {_seconds(idle)} (idle_timeout "
                                    f"{pool.idle_timeout_seconds:.0f} s)")

    async def _job_ended(self, builder: Builder, pool: PoolSettings, job: Job,
                         now: datetime) -> bool:
        """Act on the end of a builder's job; whether the builder is dealt with."""
        what = (f"its job {job.id} ended {job.status}" if job.status in FINAL_STATUSES
                else f"its job {job.id} left it (now {job.status})")
        if pool.lifecycle == "destroy-after-job":
            await self._destroy(builder, what)
            return True
        if pool.lifecycle == "keep-on-failure":
            if job.status in _FAILED:
                until = now + timedelta(seconds=pool.hold_seconds)
                async with self.db.session() as s:
                    if await q.update_builder_if(s, builder.id, "ready", state="held",
                                                 hold_until=until, reason=what):
                        await q.record(s, pool.name, "hold", f"{what}: kept for inspection "
                                       f"until {until.isoformat(timespec='seconds')}",
                                       builder.id)
            else:
                await self._destroy(builder, what)
            return True
        # keep-always: idle from the job's end (once).
        finished = job.finished_at or now
        if builder.idle_since is None or builder.idle_since < finished:
            async with self.db.session() as s:
                await q.update_builder_if(s, builder.id, ("ready",), idle_since=finished)
            builder.idle_since = finished
        return False

    async def _lost(self, builder: Builder, pool: PoolSettings, job: Job) -> None:
        """``job`` left ``builder`` without ending, and is queued again: once it has lost
        ``max_builders_per_job`` of the pool's builders so, it fails (a job that crashes
        every runner must not make builder after builder)."""
        async with self.db.session() as s:
            lost = await s.scalar(sa.select(sa.func.count()).select_from(Builder).where(
                Builder.last_job_id == job.id, Builder.pool == pool.name)) or 0
        if lost < pool.max_builders_per_job:
            return
        reason = (f"it lost {lost} builders of pool {pool.name} (the last, {builder.name}: "
                  "its runner stopped or fell silent while running it; max_builders_per_job "
                  f"is {pool.max_builders_per_job}); not queued again")
        now = utcnow()
        async with self.db.session() as s:
            done = await jq.update_job_if(s, job.id, {"status": "queued"}, status="failed",
                                          reason=reason, finished_at=now)
            if done:
                await jq.settle_tasks(s, job.id, "failed", now)
                await q.record(s, pool.name, "give-up", f"job {job.id} failed: {reason}",
                               builder.id)
        if done:
            job.status = "failed"
            log.warning("pool %s: job %d failed: %s", pool.name, job.id, reason)
            if self.jobs is not None:
                await self.jobs.ended(job.id)

    async def _drain(self, builder: Builder, busy: set[int], reason: str) -> None:
        if builder.state != "draining":
            async with self.db.session() as s:
                if await q.update_builder_if(s, builder.id, ("ready",), state="draining",
                                             reason=reason):
                    await q.record(s, builder.pool, "drain", reason, builder.id)
        if builder.id not in busy:
            await self._destroy(builder, reason)

    # --- 3. reap -----------------------------------------------------------------

    async def reap(self, seen: Activity | None = None) -> None:
        now = utcnow()
        silence = timedelta(seconds=self.settings.builders.heartbeat_timeout_seconds)
        heard = (seen or await self.see()).heard
        async with self.db.session() as s:
            live = await q.live_builders(s)
        for builder in live:
            pool = self.settings.builders.pool(builder.pool)
            boot_timeout = timedelta(seconds=pool.boot_timeout_seconds if pool else 0)
            if builder.state in ("creating", "booting"):
                # A create that never got its answer (the server stopped meanwhile)
                # stays "creating": its machine, if any, is found by its tag below.
                if now - builder.created_at > boot_timeout:
                    await self._destroy(builder, "it never enrolled within its boot timeout "
                                        f"({boot_timeout.total_seconds():.0f} s)", "reap",
                                        boot_failed=True)
                continue
            last = heard.get(builder.id) or builder.enrolled_at or builder.created_at
            if builder.state != "held" and now - last > silence:
                # Silent before it took any job: it failed to come up (its runner).
                await self._destroy(builder, f"its heartbeats stopped: last heard "
                                    f"{_seconds(now - last)} ago", "reap",
                                    boot_failed=builder.last_job_id is None)
        await self.reap_leaked()

    async def reap_leaked(self) -> None:
        """Destroy instances with this farm's tag that no live builder of it owns."""
        async with self.db.session() as s:
            live = {b.id: b for b in await q.live_builders(s)}
        for name, provider in self.service.providers.items():
            try:
                instances = await provider.list((self.service.farm_tag,))
            except ProviderError as e:
                log.warning("listing %s instances failed: %s", name, e.message)
                continue
            for instance in instances:
                owner = live.get(instance.builder_id or 0)
                if owner is not None and owner.instance_id in (None, instance.id):
                    continue
                reason = (f"instance {instance.id} ({instance.label or 'no label'}) carries "
                          "this farm's tag but no live builder of the farm owns it")
                try:
                    await provider.destroy(instance.id)
                except ProviderError as e:
                    log.warning("reaping instance %s failed: %s", instance.id, e.message)
                    continue
                await self.service.decide(instance.pool or "?", "reap", reason,
                                          instance.builder_id if owner else None)

    # --- 4. scale ----------------------------------------------------------------

    async def scale(self, pool: PoolSettings, seen: Activity | None = None) -> None:
        queued = await self.service.queued_for(pool)
        busy = (seen or await self.see()).busy
        async with self.db.session() as s:
            live = await q.live_builders(s, pool.name)
        coming = [b for b in live if b.state in ("creating", "booting")]
        free = [b for b in live if b.id not in busy and poolmatch.builder_takes_jobs(b, pool)]
        need = len(queued) - len(coming) - len(free)
        if need <= 0:
            if not queued:
                self._refused.pop(pool.name, None)
            return
        failures, backoff = await self._backoff(pool)
        if backoff is not None:
            await self._refuse(pool, "backoff", f"{len(queued)} queued jobs wait, but "
                               f"{backoff}")
            return
        if failures:  # after a back-off, one builder at a time until one comes up
            if coming:
                return
            need = 1
        count, spend = len(live), sum(b.hourly_price for b in live)
        ready = len(coming) + len(free)
        for _ in range(need):
            refusal = None
            if count >= pool.max_instances:
                refusal = (f"{len(queued)} queued jobs wait, but the pool is at "
                           f"max_instances ({pool.max_instances})")
            elif pool.max_hourly_spend is not None \
                    and spend + pool.hourly_price > pool.max_hourly_spend + 1e-9:
                refusal = (f"{len(queued)} queued jobs wait, but another builder "
                           f"({pool.hourly_price:g}/h) would take the pool's spend from "
                           f"{spend:g}/h past max_hourly_spend ({pool.max_hourly_spend:g}/h)")
            if refusal is not None:
                await self._refuse(pool, "refuse", refusal)
                return
            self._refused.pop(pool.name, None)
            await self.service.create(pool, f"{len(queued)} queued jobs for the pool, "
                                      f"{ready} builders coming or free")
            count, spend, ready = count + 1, spend + pool.hourly_price, ready + 1

    async def _refuse(self, pool: PoolSettings, action: str, refusal: str) -> None:
        """Record a refusal to create, once while the same one holds."""
        if self._refused.get(pool.name) != refusal:
            self._refused[pool.name] = refusal
            await self.service.decide(pool.name, action, refusal)

    async def _backoff(self, pool: PoolSettings) -> tuple[int, str | None]:
        """The pool's builders that failed to come up, in a row, if at least
        ``max_boot_failures`` (else 0); and why it backs off now, or None."""
        if pool.max_boot_failures <= 0:
            return 0, None
        async with self.db.session() as s:
            latest = list(await s.scalars(sa.select(Builder).where(
                Builder.pool == pool.name).order_by(Builder.id.desc()).limit(_STREAK_LOOK)))
        failed: list[Builder] = []
        for builder in latest:
            if builder.boot_failed:
                failed.append(builder)
            elif builder.enrolled_at is not None:
                break  # one came up: the streak ends here
            # else: still booting, or destroyed for another reason (by hand, a stop)
        if len(failed) < pool.max_boot_failures:
            return 0, None
        last = failed[0]
        wait = pool.boot_backoff_seconds * 2 ** min(len(failed) - pool.max_boot_failures, 4)
        until = (last.destroyed_at or last.created_at) + timedelta(seconds=wait)
        if utcnow() >= until:
            return len(failed), None
        return len(failed), (
            f"the pool's last {len(failed)} builders failed to come up (the last, "
            f"{last.name}: {last.reason}): no new builder before "
            f"{until.isoformat(timespec='seconds')} (back-off of {wait:.0f} s)")
