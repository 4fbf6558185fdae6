"""The runner side of jobs: registration, claims, leases, and what runners report.

Claiming. A runner long-polls ``claim``: the server looks for the oldest queued job
whose image (and arch) the runner offers and its token's pool allows (images, job
owners, the cache it pushes to, no secrets for an untrusted token; see
docs/security.md), all in SQL, and takes it with one conditional UPDATE
(``status = 'queued'`` -> ``running``), so two runners racing for a job cannot both
win. With nothing to take, the call sleeps on the bus topic ``jobs.queued`` (woken by
everything that makes a job claimable: a submit, a re-queue, a runner offering anew)
until its ``wait`` runs out, and re-checks the database meanwhile: once a second
where another server's submits may not reach this bus (``EventBus.complete``), else
every ``RECHECK_COMPLETE`` seconds, for a lost wake-up (a Redis reconnection). An
idle farm so reads its queue a few times a minute, not every second per slot.

Leases. Claiming gives the runner a lease of ``jobs.lease_seconds``; every runner
call about the job renews it, and a runner renews it explicitly by heartbeating
without pause. A heartbeat is held by the server up to a third of the lease, and
answered at once (bus topic ``job.<id>.control``) when the job must stop: that is how
a cancel reaches a runner within a moment rather than at its next poll.

Expiry. ``reap`` runs every quarter lease (at most every second) on every server:

- a running job whose lease expired lost its runner. If no task ever started and
  it was claimed only once, it goes back to ``queued`` (a runner that died while
  booting should not fail the job); otherwise it ends ``failed``, "runner lost";
- a running job past its time limit ends ``timeout`` and its runner is told to stop;
- a stopped (cancelled, timed-out) job whose runner never confirmed is given up on
  when the lease expires: its tasks are settled as if the runner had finished.

Each of these is a conditional UPDATE too, so reapers on several servers agree.

Interruptions. A runner that is stopped (its farm or host shuts down) gives its
running jobs a grace period, then ends them and reports ``interrupted``. A runner
that registers again after a crash holds nothing any more, so the jobs still on it
are settled the same way at once, and so are, when the farm starts, the jobs the
embedded runner of ``nixfarm up`` held when the farm stopped: neither waits for the
lease. An interrupted job goes back to the queue if that was its first run (a job
runs at most ``MAX_RUNS`` times), and ends ``interrupted`` otherwise. Its log goes
on: the re-run's chunks follow the first run's (``Assignment.resume_logs``).

Masks. Each server keeps, per job it has seen running, the ``Masker`` for that job's
log chunks (building one decrypts the job's secrets). An entry must go when no
runner holds the job any more, however that happened: the runner finished it (any
status, including after a cancel or a time-out), or ``reap`` gave it up (lost and
failed or re-queued, stopped but never confirmed). A time-out alone keeps it: the
runner still sends logs until it stops. And since the end may happen on another
server, or race with a late log chunk that re-creates the entry, every ``reap`` pass
also drops the entries of jobs its query no longer finds held.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterable, Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

import anyio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from nixfarm import images
from nixfarm.builds import poolmatch
from nixfarm.builds import secrets as secrets_mod
from nixfarm.builds.artifacts import ArtifactService, artifact_out
from nixfarm.builds.jobs import QUEUED_TOPIC, JobService, control_topic
from nixfarm.builds.shells import ShellService
from nixfarm.config import PoolSettings
from nixfarm.datadir import RUNNER_TOKEN, read_token
from nixfarm.db import jobs as q
from nixfarm.db.builders import builder_of_token
from nixfarm.db.models import Builder, Job, Runner, Task, Token, utcnow
from nixfarm.errors import Conflict, Forbidden, InvalidInput, NotFound
from nixfarm.events.base import Subscription
from nixfarm.manifest import load_manifest
from nixfarm.masking import Masker
from nixfarm.scopes import ADMIN, cache_scope
from nixfarm.storage.base import ObjectStream
from nixfarm.tokens import Principal, TokenService
from nixfarm.wire.jobs import FINAL_STATUSES, ArtifactOut, JobOut
from nixfarm.wire.runners import (
    Assignment,
    CacheGrant,
    FinishRequest,
    HeartbeatResponse,
    ImageBuildOut,
    JobLimits,
    LogAccepted,
    RunnerOut,
    RunnerRegister,
    TaskReport,
)

log = logging.getLogger("nixfarm.builds.runners")

RUNNER_LOST = "runner lost"
_CANDIDATES = 20
#: How many times a job may run: one re-run after an interruption or a lost boot.
MAX_RUNS = 2
#: Published when a job of an admin's image schedule succeeds: runners' image-builds
#: long-polls answer at once (docs/images.md, "Runners install new builds").
IMAGES_TOPIC = "images.built"
#: The artifacts an image build leaves.
IMAGE_ARTIFACTS = (images.DISK_FILE, images.HASH_FILE)



@dataclass(frozen=True)
class _Pool:
    """What a runner's token lets it claim, read at every try of a claim."""

    #: SQL conditions on ``Job``.
    conditions: list[sa.ColumnElement[bool]]
    #: The caches its jobs may push to (a push token is granted for them); None: any.
    caches: Collection[str] | None = None
    #: For an ephemeral builder: its id, and its pool.
    builder_id: int | None = None
    pool: PoolSettings | None = None


#: Seconds between a long-poll's looks at the queue where every submit wakes it.
RECHECK_COMPLETE = 10.0
#: And where another server's may not.
RECHECK = 1.0


class RunnerService:
    def __init__(self, jobs: JobService, tokens: TokenService,
                 artifacts: ArtifactService) -> None:
        self.jobs = jobs
        self.db = jobs.db
        self.settings = jobs.settings
        self.bus = jobs.bus
        self.tokens = tokens
        self.artifacts = artifacts
        self.shells = ShellService(jobs)
        self._runner_tokens: dict[int, int] = {}
        self._masks: dict[int, Masker] = {}
        #: Jobs started before this moment ran in a previous life of this process.
        self._started = utcnow()

    @property
    def lease(self) -> timedelta:
        return timedelta(seconds=self.settings.jobs.lease_seconds)

    @property
    def heartbeat_wait(self) -> float:
        return self.settings.jobs.lease_seconds / 3

    def _runner_out(self, runner: Runner) -> RunnerOut:
        return RunnerOut(id=runner.id, name=runner.name, arch=runner.arch,
                         images=runner.images, sandboxes=runner.sandboxes,
                         accelerator=runner.accelerator, slots=runner.slots,
                         image_builds=runner.image_builds or {},
                         lease_seconds=self.settings.jobs.lease_seconds,
                         heartbeat_wait=self.heartbeat_wait, last_seen_at=runner.last_seen_at)

    # --- registration ------------------------------------------------------------

    async def register(self, who: Principal, body: RunnerRegister) -> RunnerOut:
        """Register (or re-register, same token and name) a runner."""
        if not body.images:
            raise InvalidInput("A runner must offer at least one image.", field="images")
        # Claims compare these with jobs' images: a NUL would fail PostgreSQL's query.
        if any(not i or len(i) > 128 or not i.isprintable() for i in body.images):
            raise InvalidInput("A runner's images are names of 1-128 printable characters.",
                               field="images")
        async with self.db.session() as s:
            runner = await s.scalar(sa.select(Runner).where(
                Runner.token_id == who.token_id, Runner.name == body.name))
            if runner is None:
                runner = Runner(token_id=who.token_id, name=body.name)
                s.add(runner)
            runner.arch, runner.images, runner.sandboxes = body.arch, body.images, body.sandboxes
            runner.slots, runner.version, runner.last_seen_at = body.slots, body.version, utcnow()
            runner.accelerator = body.accelerator
            runner.image_builds = {k[:128]: v[:1000] for k, v in body.image_builds.items()}
            await s.flush()
        self._runner_tokens[runner.id] = who.token_id
        log.info("runner %d (%s) registered: %s", runner.id, body.name, ", ".join(body.images))
        # A runner that registers holds no job: any still on it were cut off by a restart.
        # One that only offers anew (an image installed while it runs) is running them.
        if not body.refresh:
            await self._settle_runner(runner.id,
                                      f"runner {body.name} restarted while the job ran")
        else:  # its open long-polls look again, for the jobs of the images it adds
            await self.bus.publish(QUEUED_TOPIC, f"runner {runner.id}".encode())
        return self._runner_out(runner)

    async def _settle_runner(self, runner_id: int, why: str,
                             started_before: datetime | None = None) -> None:
        """Settle at once the jobs the server still has on a runner that holds none."""
        async with self.db.session() as s:
            stmt = sa.select(Job).where(
                Job.runner_id == runner_id,
                sa.or_(Job.status == "running", Job.stop_requested.is_(True)))
            if started_before is not None:
                stmt = stmt.where(Job.started_at < started_before)
            held = list(await s.scalars(stmt))
        for job in held:
            if job.status == "running":
                await self._interrupt(job.id, runner_id, why)
            else:  # stopped (cancelled, timed out): the runner will never confirm it
                async with self.db.session() as s:
                    if await q.update_job_if(s, job.id, {"runner_id": runner_id,
                                                         "stop_requested": True},
                                             stop_requested=False, lease_expires_at=None):
                        await q.settle_tasks(s, job.id, _task_end(job.status), utcnow())
                self._masks.pop(job.id, None)

    async def settle_previous_run(self) -> None:
        """The jobs this farm's embedded runner held when the farm last stopped (a
        crash, a kill) are settled now rather than when their leases expire."""
        if self.settings.jobs.embedded_runner_slots <= 0:
            return
        secret = read_token(self.settings.data_dir / RUNNER_TOKEN)
        who = await self.tokens.authenticate(secret) if secret else None
        if who is None:
            return
        async with self.db.session() as s:
            runner_ids = list(await s.scalars(
                sa.select(Runner.id).where(Runner.token_id == who.token_id)))
        for runner_id in runner_ids:
            await self._settle_runner(runner_id, "the farm stopped while the job ran",
                                      started_before=self._started)

    async def _interrupt(self, job_id: int, runner_id: int, why: str) -> str | None:
        """End a run its runner cut off: the job is queued again after its first run,
        and ends ``interrupted`` after its last. The job's new status, or None when it
        was no longer running on that runner."""
        now = utcnow()
        where = {"status": "running", "runner_id": runner_id}
        async with self.db.session() as s:
            job = await q.get_job(s, job_id)
            if job.attempts < MAX_RUNS:
                status = "queued"
                reason = f"interrupted ({why}); queued again"
                done = await q.update_job_if(
                    s, job_id, where, status=status, reason=reason, runner_id=None,
                    lease_expires_at=None, started_at=None, queued_at=now,
                    stop_requested=False)
                if done:
                    await q.reset_tasks(s, job_id)
            else:
                status = "interrupted"
                reason = f"{why}; interrupted in its run {job.attempts} of {MAX_RUNS}"
                done = await q.update_job_if(s, job_id, where, status=status, reason=reason,
                                             finished_at=now, lease_expires_at=None)
                if done:
                    await q.settle_tasks(s, job_id, "interrupted", now)
        if not done:
            return None
        self._masks.pop(job_id, None)
        log.warning("job %d interrupted on runner %d (%s): %s", job_id, runner_id, why, status)
        if status == "queued":
            await self.jobs.logs.publish(job_id, {"type": "job", "status": status,
                                                  "reason": reason})
            await self.bus.publish(QUEUED_TOPIC, str(job_id).encode())
        else:
            await self.jobs.ended(job_id)
        return status

    async def runners(self) -> list[RunnerOut]:
        async with self.db.session() as s:
            return [self._runner_out(r) for r in await s.scalars(
                sa.select(Runner).order_by(Runner.id))]

    async def _runner(self, who: Principal, runner_id: int) -> Runner:
        async with self.db.session() as s:
            runner = await s.get(Runner, runner_id)
            if runner is None:
                raise NotFound(f"There is no runner {runner_id}; register first.",
                               kind="runner", name=str(runner_id))
            if runner.token_id != who.token_id and ADMIN not in who.scopes:
                raise Forbidden(f"runner {runner_id} belongs to another token", scope="runner")
            runner.last_seen_at = utcnow()
        return runner

    async def _check_runner(self, who: Principal, runner_id: int) -> None:
        # Every log chunk checks this: remember it rather than ask the database.
        if self._runner_tokens.get(runner_id) == who.token_id:
            return
        runner = await self._runner(who, runner_id)
        self._runner_tokens[runner_id] = runner.token_id

    # --- claiming ----------------------------------------------------------------

    async def claim(self, who: Principal, runner_id: int, wait: float,
                    gone: Callable[[], bool] = lambda: False) -> Assignment | None:
        """Take a queued job this runner can run, waiting up to ``wait`` seconds for one.

        ``gone()`` says the runner hung up: a long-poll it abandoned (it stopped, or
        timed out) must not take a job that nobody would run until its lease expired.
        """
        runner = await self._runner(who, runner_id)
        deadline = time.monotonic() + wait
        recheck = RECHECK_COMPLETE if self.bus.complete else RECHECK
        async with self.bus.subscribe(QUEUED_TOPIC) as sub:
            while True:
                if gone():
                    return None
                # Read at every try: a builder's pool and state change while it waits
                # (it drains, its one job is taken through another slot).
                pool = await self._pool(runner)
                job = await self._take(runner, pool)
                if job is not None:
                    return await self._assignment(job)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                await sub.get(min(remaining, recheck))
                # Its images, as it offers them now (an image installed meanwhile).
                async with self.db.session() as s:
                    again = await s.get(Runner, runner_id)
                if again is None:
                    return None
                runner = again

    async def _pool(self, runner: Runner) -> _Pool:
        """The conditions its token's pool puts on the jobs a runner claims.

        Read at every claim, so a pool holds from the token's creation on, on every
        server. A token without a pool that is trusted adds none (today's default).
        """
        async with self.db.session() as s:
            token = await s.get(Token, runner.token_id)
            builder = await builder_of_token(s, runner.token_id)
        if token is None:  # the runner's token row is gone: claim nothing
            return _Pool([sa.false()])
        conditions: list[sa.ColumnElement[bool]] = []
        if builder is not None:  # an ephemeral builder: its pool's jobs only (builders/)
            pool = self.settings.builders.pool(builder.pool)
            if pool is None or not poolmatch.builder_takes_jobs(builder, pool):
                return _Pool([sa.false()])
            conditions.extend(poolmatch.conditions(pool))
        # Jobs reserved for a builder pool go to that pool's builders alone (poolmatch).
        conditions.append(poolmatch.claimable_by(
            builder.pool if builder is not None else None,
            [p.name for p in self.settings.builders.pools]))
        if token.runner_images is not None:
            conditions.append(Job.image.in_(token.runner_images))
        if token.runner_owners is not None:
            conditions.append(Job.owner_name.in_(token.runner_owners))
        if not token.trusted:
            # Never run a job without the secrets it asked for, and never hand them to
            # an untrusted runner: such a job waits for a trusted one. A cache push
            # token is such a secret too (it may replace any path of the cache, signed
            # by the server), so jobs with ``cache:`` wait likewise.
            conditions.append(sa.func.json_array_length(Job.secret_ids) == 0)
        if builder is not None:
            # Its pushes are bounded by its pool's own caches, chosen by its operator.
            assert pool is not None
            return _Pool(conditions, pool.caches, builder.id, pool)
        return _Pool(conditions, None if token.trusted else ())

    async def _take(self, runner: Runner, pool: _Pool) -> Job | None:
        now = utcnow()
        undone: int | None = None
        async with self.db.session() as s:
            # Only jobs this runner can run (and its token's pool allows): jobs waiting
            # for another image, arch or runner, however many, must not hide the ones
            # behind them.
            candidates = (
                sa.select(Job)
                .where(Job.status == "queued", Job.image.in_(runner.images),
                       sa.or_(Job.arch.is_(None), Job.arch == runner.arch),
                       *pool.conditions))
            if pool.caches is not None:
                # Not the jobs that push to a cache this runner may not push to.
                candidates = candidates.where(poolmatch.may_push(pool.caches))
            queued = await s.scalars(candidates.order_by(Job.id).limit(_CANDIDATES))
            for job in list(queued):
                if await q.update_job_if(
                        s, job.id, {"status": "queued"}, status="running", runner_id=runner.id,
                        attempts=job.attempts + 1, started_at=now,
                        lease_expires_at=now + self.lease, stop_requested=False):
                    if pool.builder_id is not None and pool.pool is not None \
                            and not await _builder_takes(s, pool.builder_id, job.id,
                                                         pool.pool):
                        # Another slot of this builder took its one job first: undo.
                        await s.execute(sa.update(Job).where(Job.id == job.id).values(
                            status="queued", runner_id=None, attempts=job.attempts,
                            started_at=None, lease_expires_at=None)
                            .execution_options(synchronize_session=False))
                        undone = job.id
                        break
                    await s.refresh(job)
                    log.info("job %d claimed by runner %d", job.id, runner.id)
                    return job
        if undone is not None:  # queued again (committed): another runner may take it
            await self.bus.publish(QUEUED_TOPIC, str(undone).encode())
        return None

    async def _assignment(self, job: Job) -> Assignment:
        manifest = load_manifest(job.manifest)
        secrets = await self.jobs.secrets.values(job.secret_ids)
        self._masks[job.id] = secrets_mod.masker(secrets)
        assert job.started_at is not None
        deadline = job.started_at + timedelta(seconds=job.timeout_seconds)
        grant = None
        if manifest.cache is not None:
            cache = await self.jobs.caches.get(manifest.cache)
            _, secret = await self.tokens.create(
                f"job {job.id} cache push", [cache_scope(cache.name, "push")],
                expires_at=deadline + self.lease)
            grant = CacheGrant(name=cache.name, token=secret, public_key=cache.public_key,
                               url=f"{self.settings.base_url}/cache/{cache.name}")
        resume: dict[str, int] = {}
        if job.attempts > 1:
            for task in [None, *(t.name for t in manifest.tasks)]:
                chunks = await self.jobs.logs.chunks(job.id, task)
                if chunks:
                    resume[task or ""] = int(chunks[-1].key.rsplit("/", 1)[1]) + 1
        return Assignment(
            job_id=job.id, manifest=manifest.model_dump(mode="json", exclude_defaults=True),
            manifest_text=job.manifest, image=job.image, arch=job.arch,
            tasks=[t.name for t in manifest.tasks], secrets=secrets,
            network=self.settings.jobs.network, deadline=deadline,
            lease_seconds=self.settings.jobs.lease_seconds, heartbeat_wait=self.heartbeat_wait,
            cache=grant, job_url=self.jobs.job_url(job.id), attempt=job.attempts,
            resume_logs=resume,
            shell_hold_seconds=self.settings.jobs.shell_hold_minutes * 60,
            limits=JobLimits(home_bytes=self.settings.jobs.home_bytes,
                             log_bytes=self.settings.jobs.log_bytes,
                             artifacts=self.settings.jobs.artifacts,
                             artifact_bytes=self.settings.jobs.artifact_bytes))

    # --- while running -------------------------------------------------------------

    async def _held(self, who: Principal, runner_id: int, job_id: int) -> Job:
        """The job, if this runner holds it (renewing the lease); Conflict if not."""
        await self._check_runner(who, runner_id)
        now = utcnow()
        async with self.db.session() as s:
            job = await q.get_job(s, job_id)
            # A held job (ended, its sandbox kept for shells) is still its runner's.
            lost = (job.status in FINAL_STATUSES and not job.stop_requested
                    and job.held_until is None)
            if job.runner_id != runner_id or lost:
                raise Conflict(f"job {job_id} is no longer assigned to runner {runner_id}")
            job.lease_expires_at = now + self.lease
        return job

    async def heartbeat(self, who: Principal, runner_id: int, job_id: int,
                        wait: float) -> HeartbeatResponse:
        wait = min(wait, self.heartbeat_wait)
        async with self.bus.subscribe(control_topic(job_id)) as sub:
            job = await self._held(who, runner_id, job_id)
            if job.held_until is not None:
                return await self._hold_beat(who, runner_id, job_id, wait, sub)
            if not job.stop_requested and wait > 0:
                await sub.get(wait)
                job = await self._held(who, runner_id, job_id)
        assert job.lease_expires_at is not None
        return HeartbeatResponse(stop=job.stop_requested,
                                 reason=job.status if job.stop_requested else None,
                                 lease_expires_at=job.lease_expires_at)

    async def _hold_beat(self, who: Principal, runner_id: int, job_id: int, wait: float,
                         sub: Subscription) -> HeartbeatResponse:
        """A heartbeat on a held job: the shell sessions waiting for it, or release."""
        job = await self._held(who, runner_id, job_id)
        shells = await self.shells.waiting(job_id)
        assert job.held_until is not None
        if not shells and job.held_until > utcnow() and wait > 0:
            await sub.get(min(wait, (job.held_until - utcnow()).total_seconds()))
            job = await self._held(who, runner_id, job_id)
            shells = await self.shells.waiting(job_id)
        assert job.lease_expires_at is not None and job.held_until is not None
        return HeartbeatResponse(stop=False, reason=None, lease_expires_at=job.lease_expires_at,
                                 shells=shells, release=job.held_until <= utcnow())

    async def release(self, who: Principal, runner_id: int, job_id: int) -> None:
        """The runner shut a held sandbox down."""
        await self._held(who, runner_id, job_id)
        await self.shells.release(job_id)
        log.info("job %d: its held sandbox is gone", job_id)

    async def _masker_of(self, job: Job) -> Masker:
        masker = self._masks.get(job.id)
        if masker is None:  # claimed through another server, or before a restart
            masker = secrets_mod.masker(await self.jobs.secrets.values(job.secret_ids))
            self._masks[job.id] = masker
        return masker

    async def log(self, who: Principal, runner_id: int, job_id: int, task: str | None,
                  seq: int, data: bytes) -> LogAccepted:
        job = await self._held(who, runner_id, job_id)
        if task is not None:
            async with self.db.session() as s:
                await q.get_task(s, job_id, task)
        data = (await self._masker_of(job)).chunk(data)
        stored = await self.jobs.logs.append(job_id, task, seq, data)
        return LogAccepted(log=task or "setup", seq=seq, stored=stored)

    async def report_task(self, who: Principal, runner_id: int, job_id: int, name: str,
                          body: TaskReport) -> None:
        job = await self._held(who, runner_id, job_id)
        if job.status in FINAL_STATUSES:
            return  # cancelled or timed out: its tasks were settled then, and stay so
        now = utcnow()
        async with self.db.session() as s:
            task = await q.get_task(s, job_id, name)
            task.status = body.status
            task.exit_code = body.exit_code
            if body.status == "running":
                task.started_at = now
            else:
                task.finished_at = now
        await self.jobs.logs.publish(job_id, {"type": "task", "name": name,
                                              "status": body.status,
                                              "exit_code": body.exit_code})

    async def artifact(self, who: Principal, runner_id: int, job_id: int, name: str,
                       path: str, body: AsyncIterable[bytes]) -> ArtifactOut:
        await self._held(who, runner_id, job_id)
        return await self.artifacts.save(job_id, name, path, body)

    async def finish(self, who: Principal, runner_id: int, job_id: int,
                     body: FinishRequest) -> JobOut:
        await self._held(who, runner_id, job_id)
        # Interrupted: queued again or ended (None: it ended otherwise meanwhile).
        why = body.reason or "its runner stopped"
        if body.status == "interrupted" and await self._interrupt(job_id, runner_id,
                                                                  why) is not None:
            return await self.jobs.view(job_id)
        now = utcnow()
        reason = body.reason
        if body.failed_step and body.status == "failed":
            reason = f"{body.failed_step} failed" + (f": {reason}" if reason else "")
        status = "failed" if body.status == "interrupted" else body.status
        hold = self.settings.jobs.shell_hold_minutes
        held = {"held_until": now + timedelta(minutes=hold), "lease_expires_at": now + self.lease
                } if body.held and hold > 0 else {"lease_expires_at": None}
        async with self.db.session() as s:
            ended = await q.update_job_if(
                s, job_id, {"status": "running", "runner_id": runner_id},
                status=status, reason=reason, finished_at=now, **held)
            # Cancelled or timed out meanwhile: the runner has stopped, as asked.
            await q.update_job_if(s, job_id, {"runner_id": runner_id}, stop_requested=False,
                                  lease_expires_at=None)
            final = (await q.get_job(s, job_id)).status
            await q.settle_tasks(s, job_id, _task_end(final), now)
        self._masks.pop(job_id, None)
        if ended:
            log.info("job %d ended %s on runner %d", job_id, status, runner_id)
            await self.jobs.ended(job_id)
            if final == "success":
                async with self.db.session() as s:
                    rebuilt = await s.scalar(sa.select(Job.rebuilds_image)
                                             .where(Job.id == job_id))
                if rebuilt is not None:
                    await self.bus.publish(IMAGES_TOPIC, str(job_id).encode())
        return await self.jobs.view(job_id)

    # --- image builds ------------------------------------------------------------

    async def image_builds(self, who: Principal, runner_id: int, after: int, wait: float,
                           gone: Callable[[], bool] = lambda: False) -> list[ImageBuildOut]:
        """The latest build of each image the runner offers, of jobs after ``after``;
        waiting up to ``wait`` seconds for one (woken by ``IMAGES_TOPIC``; the database
        is asked again only then, or at the end)."""
        runner = await self._runner(who, runner_id)
        deadline = time.monotonic() + wait
        async with self.bus.subscribe(IMAGES_TOPIC) as sub:
            while True:
                found = await self._image_builds(runner, after)
                if found or gone():
                    return found
                while (remaining := deadline - time.monotonic()) > 0 and not gone():
                    # A second at a time only to notice the runner hanging up.
                    if await sub.get(min(remaining, 1.0)) is not None:
                        break
                else:
                    return await self._image_builds(runner, after)

    async def _image_builds(self, runner: Runner, after: int) -> list[ImageBuildOut]:
        async with self.db.session() as s:
            jobs = list(await s.scalars(
                sa.select(Job).where(Job.rebuilds_image.in_(runner.images),
                                     Job.status == "success", Job.id > after)
                .order_by(Job.id.desc()).limit(50)))
            latest: dict[tuple[str, str], Job] = {}
            for job in jobs:
                latest.setdefault((job.rebuilds_image or "", job.rebuilds_arch or ""), job)
            out = []
            for (image, arch), job in sorted(latest.items()):
                artifacts = [a for a in await q.artifacts_of(s, job.id)
                             if a.name in IMAGE_ARTIFACTS]
                views = [artifact_out(a, self.settings.base_url).model_copy(update={
                    "url": f"{self.settings.base_url}/api/v1/runners/{runner.id}"
                           f"/image-builds/{job.id}/{a.name}"}) for a in artifacts]
                out.append(ImageBuildOut(image=image, arch=arch, job_id=job.id,
                                         finished_at=job.finished_at or job.created_at,
                                         artifacts=views))
        return out

    async def image_artifact(self, who: Principal, runner_id: int, job_id: int, name: str
                             ) -> tuple[ArtifactOut, ObjectStream]:
        """An artifact of an image build this runner may install (see image_builds)."""
        runner = await self._runner(who, runner_id)
        async with self.db.session() as s:
            job = await s.get(Job, job_id)
        if (job is None or job.rebuilds_image is None or job.status != "success"
                or job.rebuilds_image not in runner.images or name not in IMAGE_ARTIFACTS):
            raise NotFound(f"Job {job_id} is no image build of runner {runner_id}'s.",
                           kind="artifact", name=name)
        return await self.artifacts.open(job_id, name)

    # --- expiry ------------------------------------------------------------------

    async def reap(self) -> list[int]:
        """One pass over leases and time limits; the ids of jobs that ended."""
        now = utcnow()
        ended: list[int] = []
        released: list[int] = []  # no runner holds these any more: their masks go
        requeued = False
        # Taken before the query: an entry added after it (a claim, a log) may be for a
        # job the query did not see running yet, and must not be dropped.
        cached = set(self._masks)
        async with self.db.session() as s:
            running = list(await s.scalars(sa.select(Job).where(
                sa.or_(Job.status == "running", Job.stop_requested.is_(True)))))
            for job in running:
                lease_over = job.lease_expires_at is not None and job.lease_expires_at < now
                if job.status != "running":  # stopped, waiting for its runner to confirm
                    if lease_over and await q.update_job_if(
                            s, job.id, {"stop_requested": True,
                                        "lease_expires_at": job.lease_expires_at},
                            stop_requested=False, lease_expires_at=None):
                        await q.settle_tasks(s, job.id, _task_end(job.status), now)
                        released.append(job.id)
                    continue
                if lease_over:
                    started = await s.scalar(sa.select(sa.func.count()).where(
                        Task.job_id == job.id, Task.status != "pending"))
                    if not started and job.attempts < 2:
                        if await q.update_job_if(
                                s, job.id, {"status": "running", "runner_id": job.runner_id},
                                status="queued", runner_id=None, lease_expires_at=None,
                                started_at=None, queued_at=now):
                            log.warning("job %d: runner %s lost before any task; re-queued",
                                        job.id, job.runner_id)
                            released.append(job.id)
                            requeued = True
                    elif await q.update_job_if(
                            s, job.id, {"status": "running", "runner_id": job.runner_id},
                            status="failed", reason=RUNNER_LOST, finished_at=now,
                            lease_expires_at=None):
                        await q.settle_tasks(s, job.id, "failed", now)
                        log.warning("job %d: runner %s lost", job.id, job.runner_id)
                        ended.append(job.id)
                        released.append(job.id)
                    continue
                assert job.started_at is not None
                limit = timedelta(seconds=job.timeout_seconds)
                if now - job.started_at > limit and await q.update_job_if(
                        s, job.id, {"status": "running"}, status="timeout", finished_at=now,
                        stop_requested=True,
                        reason=f"the job ran longer than its limit of {_duration(limit)}"):
                    ended.append(job.id)
        # Released jobs go even if not in ``cached``; the rest of ``cached`` goes unless
        # the query found the job still held (ended elsewhere, or re-added by a late log).
        held = {job.id for job in running}.difference(released)
        for job_id in (cached - held).union(released):
            self._masks.pop(job_id, None)
        for job_id in ended:
            await self.bus.publish(control_topic(job_id), b"stop")
            await self.jobs.ended(job_id)
        if requeued:
            await self.bus.publish(QUEUED_TOPIC, b"requeued")
        return ended

    async def reap_forever(self) -> None:
        interval = min(1.0, self.settings.jobs.lease_seconds / 4)
        try:
            await self.settle_previous_run()
        except Exception:  # the leases will settle them, later
            log.exception("settling the jobs of the farm's previous run failed")
        while True:
            try:
                await self.reap()
            except Exception:  # a failing pass (database restart) must not stop the next
                log.exception("lease expiry pass failed")
            await anyio.sleep(interval)


async def _builder_takes(s: AsyncSession, builder_id: int, job_id: int,
                         pool: PoolSettings) -> bool:
    """Record that a ready builder took ``job_id``; False when it may not (any more):
    a builder that runs one job only has taken one already, or it is no longer ready."""
    stmt = sa.update(Builder).where(Builder.id == builder_id, *poolmatch.builder_open(pool))
    result = await s.execute(stmt.values(last_job_id=job_id)
                             .execution_options(synchronize_session=False))
    taken: bool = result.rowcount == 1  # type: ignore[attr-defined]
    return taken


def _task_end(job_status: str) -> str:
    """What a task still running becomes when its job ends with ``job_status``."""
    if job_status in ("success", "cancelled", "interrupted"):
        return job_status
    return "failed"


def _duration(limit: timedelta) -> str:
    seconds = limit.total_seconds()
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} minutes"
    return f"{seconds:g} seconds"
