"""Builder records: create, enroll, destroy, and every decision about them.

A builder's states, and who moves it:

    creating ──provider accepted──> booting ──enrolled──> ready ──(job ends)──> destroyed
        │                              │                  │  ╲
        └─provider refused─> destroyed └─boot timeout─>   │   held (keep-on-failure) ─>
                                         destroyed (reap) │
                                                 max uptime, pool gone: draining ─>

Destroying revokes the builder's runner token first (its calls fail at once, on this
server, and within the token memo's few seconds on others), then deletes the machine;
a machine the provider fails to delete keeps its row live, so the next pass tries
again, and the reaper catches whatever still carries the farm's tag.

Every decision (create, destroy, refuse, reap, drain, hold, fail) is a row in
``builder_decisions`` with one sentence saying why; the API, the CLI and the builder
pages show them.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import anyio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from nixfarm.builders import enrollment
from nixfarm.builders.base import InstanceSpec, Provider, farm_tag, tags_of, user_data
from nixfarm.builds import poolmatch
from nixfarm.config import PoolSettings, Settings
from nixfarm.db import builders as q
from nixfarm.db.engine import Database
from nixfarm.db.models import Builder, Job, Runner, utcnow
from nixfarm.errors import Conflict, ProviderError, Unauthorized
from nixfarm.scopes import RUNNER
from nixfarm.tokens import TokenService
from nixfarm.wire.builders import BuilderDetail, BuilderOut, DecisionOut, Enrollment, PoolOut

log = logging.getLogger("nixfarm.builders")

#: A builder's runner token outlives its pool's maximum uptime by this much.
_TOKEN_MARGIN = timedelta(minutes=10)
_MAX_QUEUE_LOOK = 1000


@dataclass
class Activity:
    """What a set of enrolled builders' runners are doing, read at once."""

    #: Builder id -> the runner its token registered (the last, if several).
    runners: dict[int, int] = field(default_factory=dict)
    #: The builders running a job now.
    busy: set[int] = field(default_factory=set)
    #: When each last called: a claim (its runner's last_seen_at) or a call about its
    #: running job (which renewed the job's lease).
    heard: dict[int, datetime] = field(default_factory=dict)


def farm_id(settings: Settings) -> str:
    """The id in this farm's instance tags: configured, or derived from its URL."""
    if settings.builders.farm_id:
        return settings.builders.farm_id
    return hashlib.sha256(settings.base_url.encode()).hexdigest()[:12]


class BuilderService:
    def __init__(self, db: Database, settings: Settings, tokens: TokenService,
                 providers: dict[str, Provider]) -> None:
        self.db = db
        self.settings = settings
        self.tokens = tokens
        self.providers = providers
        self.farm_id = farm_id(settings)

    @property
    def farm_tag(self) -> str:
        return farm_tag(self.farm_id)

    def boot_url(self, builder_id: int) -> str:
        """The iPXE script the builder's machine chain-loads (served by the farm)."""
        return f"{self.settings.base_url}/builders/{builder_id}/boot.ipxe"

    def provider(self, name: str) -> Provider:
        try:
            return self.providers[name]
        except KeyError:
            raise Conflict(f"builder provider {name!r} is not configured in this farm "
                           "(no pool uses it)") from None

    # --- decisions ---------------------------------------------------------------

    async def decide(self, pool: str, action: str, reason: str,
                     builder_id: int | None = None) -> None:
        async with self.db.session() as s:
            await q.record(s, pool, action, reason, builder_id)
        log.info("pool %s: %s%s: %s", pool, action,
                 f" builder {builder_id}" if builder_id else "", reason)

    # --- create ------------------------------------------------------------------

    async def create(self, pool: PoolSettings, why: str) -> Builder:
        """A new builder of ``pool``: its row, its enrollment token, its machine.
        A provider that refuses leaves the builder ``destroyed``, the refusal recorded."""
        token, token_hash = enrollment.new_token()
        now = utcnow()
        async with self.db.session() as s:
            builder = Builder(
                name="", pool=pool.name, provider=pool.provider, state="creating",
                region=pool.region, plan=pool.plan, hourly_price=pool.hourly_price,
                enroll_hash=token_hash,
                enroll_expires_at=now + timedelta(seconds=self.settings.builders.enroll_seconds),
                created_at=now)
            s.add(builder)
            await s.flush()
            builder.name = f"nixfarm-{self.farm_id}-{pool.name}-{builder.id}"
            await q.record(s, pool.name, "create", why, builder.id)
        log.info("pool %s: creating builder %d: %s", pool.name, builder.id, why)
        spec = InstanceSpec(name=builder.name, region=pool.region, plan=pool.plan,
                            image=pool.image, boot_url=self.boot_url(builder.id),
                            user_data=user_data(self.settings.base_url, token),
                            tags=tags_of(self.farm_id, pool.name, builder.id))
        try:
            instance = await self.provider(pool.provider).create(spec)
        except (ProviderError, Conflict) as e:
            async with self.db.session() as s:
                await q.update_builder_if(s, builder.id, "creating", state="destroyed",
                                          destroyed_at=utcnow(), enroll_hash=None,
                                          reason=f"the provider refused it: {e.message}",
                                          boot_failed=True)
                await q.record(s, pool.name, "fail", f"creating {builder.name} failed: "
                               f"{e.message}", builder.id)
            log.warning("pool %s: creating builder %d failed: %s", pool.name, builder.id,
                        e.message)
            async with self.db.session() as s:
                return await q.get_builder(s, builder.id)
        async with self.db.session() as s:
            await q.update_builder_if(s, builder.id, "creating", state="booting",
                                      instance_id=instance.id, ip=instance.ip)
            return await q.get_builder(s, builder.id)

    # --- enrollment --------------------------------------------------------------

    async def enroll(self, token: str) -> Enrollment:
        """Trade a builder's one-time enrollment token for its runner token."""
        if not token.startswith(enrollment.PREFIX):
            raise Unauthorized("the enrollment token is unknown, used or expired")
        now = utcnow()
        refused = Unauthorized("the enrollment token is unknown, used or expired")
        async with self.db.session() as s:
            builder = await s.scalar(sa.select(Builder).where(
                Builder.enroll_hash == enrollment.token_hash(token)))
            if builder is None or builder.enroll_expires_at is None \
                    or builder.enroll_expires_at <= now:
                raise refused
            pool = self.settings.builders.pool(builder.pool)
            # The state condition makes the token work once, whoever races for it.
            if pool is None or not await q.update_builder_if(
                    s, builder.id, ("creating", "booting"), enroll_hash=None, state="ready",
                    enrolled_at=now, idle_since=now, enroll_expires_at=None):
                raise refused
        expires = now + timedelta(seconds=pool.max_uptime_seconds) + _TOKEN_MARGIN
        view, secret = await self.tokens.create(
            f"builder {builder.name}", [RUNNER], expires_at=expires,
            runner_images=pool.job_images, trusted=pool.trusted)
        async with self.db.session() as s:
            await q.update_builder_if(s, builder.id, ("ready", "draining"), token_id=view.id)
            await q.record(s, pool.name, "enroll", f"{builder.name} enrolled", builder.id)
        log.info("builder %d (%s) enrolled", builder.id, builder.name)
        return Enrollment(builder_id=builder.id, name=builder.name, pool=pool.name,
                          server=self.settings.base_url, runner_token=secret,
                          runner_token_expires_at=expires, arch=pool.arch,
                          images=list(pool.job_images))

    # --- destroy -----------------------------------------------------------------

    async def destroy(self, builder_id: int, reason: str, action: str = "destroy",
                      boot_failed: bool = False) -> Builder:
        """Revoke its runner token, delete its machine, and record why. Idempotent;
        ``ProviderError`` (recorded) if the provider fails to delete the machine.
        ``boot_failed``: it is destroyed for failing to come up (the pool's back-off)."""
        async with self.db.session() as s:
            builder = await q.get_builder(s, builder_id)
        if builder.state == "destroyed":
            return builder
        if builder.token_id is not None:
            await self.tokens.revoke(builder.token_id)
        if builder.instance_id is not None:
            try:
                await self.provider(builder.provider).destroy(builder.instance_id)
            except (ProviderError, Conflict) as e:
                await self.decide(builder.pool, "fail", f"destroying {builder.name} failed: "
                                  f"{e.message}", builder.id)
                raise
        async with self.db.session() as s:
            done = await q.update_builder_if(
                s, builder_id, q.LIVE, state="destroyed", destroyed_at=utcnow(),
                reason=reason, enroll_hash=None, boot_failed=boot_failed)
            if done:
                await q.record(s, builder.pool, action, reason, builder.id)
            builder = await q.get_builder(s, builder_id)
        log.info("builder %d (%s) destroyed: %s", builder.id, builder.name, reason)
        return builder

    async def shutdown(self) -> list[int]:
        """The server stops: destroy every builder that is not running a job (nobody
        would enforce their idle timeouts meanwhile); busy ones build on, and the
        server picks them up again when it starts. The ids destroyed."""
        destroyed: list[int] = []
        async with self.db.session() as s:
            live = await q.live_builders(s)
            busy = (await self.activity(s, live)).busy

        async def destroy(builder: Builder) -> None:
            try:
                await self.destroy(builder.id, "the server stopped while it had no job")
                destroyed.append(builder.id)
            except (ProviderError, Conflict):  # recorded; idle timeouts act at next start
                log.exception("destroying builder %d at shutdown failed", builder.id)

        # All at once, before anything else: a stopping worker has seconds, not minutes.
        async with anyio.create_task_group() as tasks:
            for builder in live:
                if builder.id not in busy:
                    tasks.start_soon(destroy, builder)
        for builder in live:
            if builder.id in busy:
                await self.decide(builder.pool, "keep", f"the server stops; {builder.name} "
                                  "runs a job and is kept", builder.id)
        return destroyed

    # --- what it knows -----------------------------------------------------------

    async def runner_ids(self, s: AsyncSession,
                         builders: list[Builder]) -> dict[int, int]:
        """Builder id -> the runner its token registered, for those that did."""
        tokens = {b.token_id: b.id for b in builders if b.token_id is not None}
        if not tokens:
            return {}
        rows = await s.execute(sa.select(Runner.token_id, Runner.id).where(
            Runner.token_id.in_(tokens)))
        return {tokens[token_id]: runner_id for token_id, runner_id in rows}

    async def activity(self, s: AsyncSession, builders: list[Builder]) -> Activity:
        """What the builders' runners are doing (two queries, whatever their number)."""
        tokens = {b.token_id: b.id for b in builders if b.token_id is not None}
        out = Activity()
        if not tokens:
            return out
        lease = timedelta(seconds=self.settings.jobs.lease_seconds)
        rows = await s.execute(sa.select(Runner.id, Runner.token_id, Runner.last_seen_at)
                               .where(Runner.token_id.in_(tokens)))
        by_runner: dict[int, int] = {}  # every runner of those tokens -> its builder
        for runner_id, token_id, seen in rows:
            builder = by_runner[runner_id] = tokens[token_id]
            out.runners[builder] = runner_id
            out.heard[builder] = max(out.heard.get(builder, seen), seen)
        if not by_runner:
            return out
        running = await s.execute(sa.select(Job.runner_id, Job.lease_expires_at).where(
            Job.runner_id.in_(by_runner), Job.status == "running"))
        for holder, expires in running:
            builder = by_runner[holder or 0]
            out.busy.add(builder)
            if expires is not None:  # the lease was renewed a lease ago: a call then
                out.heard[builder] = max(out.heard.get(builder, expires - lease),
                                         expires - lease)
        return out

    async def queued_for(self, pool: PoolSettings) -> list[int]:
        """The queued jobs ``pool`` would take, oldest first."""
        async with self.db.session() as s:
            return list(await s.scalars(sa.select(Job.id).where(
                Job.status == "queued", *poolmatch.conditions(pool),
                poolmatch.may_push(pool.caches), poolmatch.claimable_by(pool.name, ()))
                .order_by(Job.id).limit(_MAX_QUEUE_LOOK)))

    def _out(self, builder: Builder, runner_id: int | None) -> BuilderOut:
        return BuilderOut(
            id=builder.id, name=builder.name, pool=builder.pool, provider=builder.provider,
            instance_id=builder.instance_id, state=builder.state, ip=builder.ip,
            region=builder.region, plan=builder.plan, hourly_price=builder.hourly_price,
            reason=builder.reason, last_job_id=builder.last_job_id, runner_id=runner_id,
            boot_url=self.boot_url(builder.id), created_at=builder.created_at,
            enrolled_at=builder.enrolled_at, idle_since=builder.idle_since,
            hold_until=builder.hold_until, destroyed_at=builder.destroyed_at)

    async def list_builders(self, include_destroyed: bool = False,
                   pool: str | None = None) -> list[BuilderOut]:
        async with self.db.session() as s:
            builders = await q.list_builders(s, include_destroyed=include_destroyed, pool=pool)
            runners = await self.runner_ids(s, builders)
        return [self._out(b, runners.get(b.id)) for b in builders]

    async def view(self, builder_id: int) -> BuilderOut:
        async with self.db.session() as s:
            builder = await q.get_builder(s, builder_id)
            runners = await self.runner_ids(s, [builder])
        return self._out(builder, runners.get(builder.id))

    async def show(self, builder_id: int) -> BuilderDetail:
        async with self.db.session() as s:
            builder = await q.get_builder(s, builder_id)
            runners = await self.runner_ids(s, [builder])
            decisions = await q.decisions(s, builder_id=builder_id)
        return BuilderDetail(**self._out(builder, runners.get(builder.id)).model_dump(),
                             decisions=[_decision(d) for d in decisions])

    async def decisions(self, pool: str | None = None, limit: int = 100) -> list[DecisionOut]:
        async with self.db.session() as s:
            return [_decision(d) for d in await q.decisions(s, pool=pool, limit=limit)]

    async def pools(self) -> list[PoolOut]:
        out: list[PoolOut] = []
        for pool in self.settings.builders.pools:
            async with self.db.session() as s:
                live = await q.live_builders(s, pool.name)
            out.append(PoolOut(
                name=pool.name, provider=pool.provider, region=pool.region, plan=pool.plan,
                image=pool.image, hourly_price=pool.hourly_price,
                max_instances=pool.max_instances, max_hourly_spend=pool.max_hourly_spend,
                arch=pool.arch, job_images=list(pool.job_images),
                job_tags=list(pool.job_tags), caches=list(pool.caches), trusted=pool.trusted,
                lifecycle=pool.lifecycle, idle_timeout_seconds=pool.idle_timeout_seconds,
                max_uptime_seconds=pool.max_uptime_seconds,
                boot_timeout_seconds=pool.boot_timeout_seconds, builders=len(live),
                hourly_spend=round(sum(b.hourly_price for b in live), 6),
                queued=len(await self.queued_for(pool))))
        return out

    async def close(self) -> None:
        for provider in self.providers.values():
            await provider.close()


def _decision(d: object) -> DecisionOut:
    return DecisionOut.model_validate(d, from_attributes=True)
