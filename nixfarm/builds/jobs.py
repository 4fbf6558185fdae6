"""The job service: submit, inspect, start, cancel, group and follow CI jobs.

Job states and who moves a job between them::

    pending ──start──> queued ──claim──> running ──finish──> success | failed
       │                 │ ^               │ │ └──lease lost──> failed ("runner lost")
       │                 │ └──lease lost, no task started yet (once)──┘ │
       │                 │ └──interrupted (runner stopped; once)──┘     │
       │                 │             interrupted a second time──> interrupted
       └──cancel──> cancelled <──cancel──┘        └──time limit──> timeout

Users act through this module; runners through ``runners``. Whoever moves a job to
a final state calls ``ended``, which tells followers and fires the job's triggers in
the background. Access (docs/security.md): a job's owner (the submitting token) and
admins may change it and read it; anyone may read a public job; an unlisted one is
read with its key (``?key=``, a capability the farm derives from the job's id: ids
are sequential and guessable, keys are not); a private one (the default) by its
owner and admins alone. Whoever may not read a job is told it does not exist. Logs,
events and artifacts follow their job. Listings show a caller their own jobs and
everyone's public ones; the URLs of an unlisted job carry its key.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from anyio.abc import TaskGroup

from nixfarm.builds import logs as logs_mod
from nixfarm.builds import poolmatch
from nixfarm.builds.artifacts import artifact_out
from nixfarm.builds.logs import LogService
from nixfarm.builds.secrets import SecretService
from nixfarm.builds.triggers import TriggerService
from nixfarm.cache.service import CacheService
from nixfarm.config import Settings
from nixfarm.db import jobs as q
from nixfarm.db.engine import Database
from nixfarm.db.models import Job, Runner, utcnow
from nixfarm.errors import Conflict, Forbidden, InvalidInput, NotFound
from nixfarm.events.base import EventBus
from nixfarm.manifest import Manifest, check_supported, load_manifest
from nixfarm.scopes import ADMIN, allows, cache_scope
from nixfarm.tokens import Principal
from nixfarm.wire.jobs import (
    FINAL_STATUSES,
    MAX_PAGE,
    DeliveryOut,
    JobGroupCreate,
    JobGroupOut,
    JobOut,
    JobPage,
    JobSubmit,
    TaskOut,
    TriggerOut,
)

log = logging.getLogger("nixfarm.builds.jobs")

#: Bus topic waking runners' long-polls when a job is queued.
QUEUED_TOPIC = "jobs.queued"


def control_topic(job_id: int) -> str:
    """Bus topic waking a job's heartbeat when the job must stop."""
    return f"job.{job_id}.control"


def is_admin(who: Principal | None) -> bool:
    return who is not None and ADMIN in who.scopes


def may_read(who: Principal | None, job: Job, key: str | None = None,
             job_key: str | None = None) -> bool:
    """Whether ``who`` (with ``key``, from the URL) may read ``job`` (whose key, when
    unlisted, is ``job_key``)."""
    if job.visibility == "public" or may_change(who, job):
        return True
    return (job.visibility == "unlisted" and key is not None and job_key is not None
            and hmac.compare_digest(key.encode(), job_key.encode()))


def may_change(who: Principal | None, job: Job) -> bool:
    return who is not None and (who.token_id == job.owner_id or is_admin(who))


def _visible_to(who: Principal | None) -> int | None:
    """``list_jobs``'s ``visible_to`` for ``who``: None (everything) for an admin."""
    return None if is_admin(who) else (who.token_id if who else -1)


def _aware(moment: datetime | None) -> datetime | None:
    """A time without a zone is read as UTC, the zone every timestamp here is in."""
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None \
        else moment


@dataclass(frozen=True)
class Overview:
    """The farm's jobs at a glance, as one caller may see them."""

    queued: int
    running: list[JobOut]
    failures: list[JobOut]


class JobService:
    def __init__(self, db: Database, settings: Settings, bus: EventBus, logs: LogService,
                 secrets: SecretService, triggers: TriggerService,
                 caches: CacheService) -> None:
        self.db = db
        self.settings = settings
        self.bus = bus
        self.logs = logs
        self.secrets = secrets
        self.triggers = triggers
        self.caches = caches
        self._tasks: TaskGroup | None = None

    def attach(self, tasks: TaskGroup | None) -> None:
        """Run trigger deliveries in ``tasks`` (the server's); None runs them inline."""
        self._tasks = tasks

    # --- views -------------------------------------------------------------------

    def job_url(self, job_id: int) -> str:
        return f"{self.settings.base_url}/jobs/{job_id}"

    def _api(self, job_id: int) -> str:
        return f"{self.settings.base_url}/api/v1/jobs/{job_id}"

    async def _views(self, jobs: list[Job], full: bool) -> list[JobOut]:
        ids = [j.id for j in jobs]
        async with self.db.session() as s:
            tasks = await q.tasks_of(s, ids)
            tags = await q.tags_of(s, ids)
            runners = await q.runner_names(s, (j.runner_id for j in jobs))
            extra = {}
            if full:
                for job in jobs:
                    extra[job.id] = (await q.artifacts_of(s, job.id),
                                     await q.triggers_of(s, job.id))
        out = []
        for job in jobs:
            api = self._api(job.id)
            key = self.secrets.job_key(job.id) if job.visibility == "unlisted" else None
            query = f"?key={key}" if key else ""
            artifacts, triggers = extra.get(job.id, ([], []))
            out.append(JobOut(
                id=job.id, status=job.status, owner=job.owner_name,
                image=job.image, arch=job.arch, note=job.note, tags=tags[job.id],
                visibility=job.visibility, key=key, reason=job.reason,
                group_id=job.group_id, runner=runners.get(job.runner_id or 0),
                pool=job.pool,
                created_at=job.created_at, queued_at=job.queued_at,
                started_at=job.started_at, finished_at=job.finished_at,
                held_until=job.held_until if job.held_until and job.held_until > utcnow()
                else None,
                url=self.job_url(job.id) + query, setup_log_url=f"{api}/log{query}",
                tasks=[TaskOut(name=t.name, status=t.status,
                               exit_code=t.exit_code, started_at=t.started_at,
                               finished_at=t.finished_at,
                               log_url=f"{api}/tasks/{t.name}/log{query}")
                       for t in tasks[job.id]],
                artifacts=[artifact_out(a, self.settings.base_url, query) for a in artifacts],
                triggers=[TriggerOut(
                    action=t.action, condition=t.condition,
                    status="pending" if t.status == "sending" else t.status,
                    details=t.details,
                    deliveries=[DeliveryOut(attempt=d.attempt, ok=d.ok, detail=d.detail,
                                            created_at=d.created_at) for d in ds])
                    for t, ds in triggers],
            ))
        return out

    async def view(self, job_id: int) -> JobOut:
        async with self.db.session() as s:
            job = await q.get_job(s, job_id)
        return await self._view(job)

    async def _view(self, job: Job) -> JobOut:
        return (await self._views([job], full=True))[0]

    async def _readable(self, who: Principal | None, job_id: int, key: str | None = None
                        ) -> Job:
        async with self.db.session() as s:
            job = await q.get_job(s, job_id)
        job_key = self.secrets.job_key(job.id) if job.visibility == "unlisted" else None
        if not may_read(who, job, key, job_key):
            # A private job's existence is not revealed to others.
            raise NotFound(f"There is no job {job_id}.", kind="job", name=str(job_id))
        return job

    async def _changeable(self, who: Principal, job_id: int) -> Job:
        job = await self._readable(who, job_id)
        if not may_change(who, job):
            raise Forbidden(f"job {job_id} is not yours to change", scope=ADMIN)
        return job

    # --- users -------------------------------------------------------------------

    async def check(self, who: Principal, text: str, *, secrets: bool = True) -> Manifest:
        """Validate ``text`` as this server would run it for ``who``; ManifestError if not.

        The one decision submit and ``POST /api/v1/manifests/check`` share: a check says
        what a submit would, refusals that depend on the server (oauth, shell, an image
        no runner offers, a cache the token may not push to, a secret it may not use)
        included."""
        return (await self._decide(who, text, secrets))[0]

    async def _decide(self, who: Principal, text: str, secrets: bool
                      ) -> tuple[Manifest, list[str]]:
        """The checked manifest and the UUIDs of its secrets (none when not ``secrets``)."""
        manifest = load_manifest(text)
        images, arches = await self.offered()
        caches = [c.name for c in await self.caches.all()
                  if allows(who.scopes, cache_scope(c.name, "push"))]
        check_supported(manifest, images, arches, caches=caches,
                        shell=self.settings.jobs.shell_hold_minutes > 0)
        secret_ids = await self.secrets.resolve(who, manifest.secrets) if secrets else []
        return manifest, secret_ids

    async def offered(self) -> tuple[set[str], set[str]]:
        """Images and arches configured, taken by a builder pool, or offered by a
        registered runner."""
        images = set(self.settings.jobs.images)
        if self.settings.registry.source.kind == "none":
            # ``nix`` roots are composed from a Nix package source: a server without one
            # offers it only once a runner that brings its own (--nix-source) registers,
            # or a job would wait in the queue for a runner that never comes.
            images.discard("nix")
        arches = set(self.settings.jobs.arches)
        # A builder pool offers its jobs' images: its builders come when such a job waits.
        for pool in self.settings.builders.pools:
            if pool.max_instances > 0:
                images.update(pool.job_images)
                arches.add(pool.arch)
        async with self.db.session() as s:
            for runner in await s.scalars(sa.select(Runner)):
                images.update(runner.images)
                arches.add(runner.arch)
        return images, arches

    async def submit(self, who: Principal, body: JobSubmit, group_id: int | None = None,
                     *, release: bool = False, pool: str | None = None,
                     rebuilds: tuple[str, str] | None = None) -> JobOut:
        """Queue (or, not ``execute``, keep pending) a job. ``release``: it targets a
        builder pool (``pool``, or the first that takes it; ``poolmatch``).
        ``rebuilds``: the (image, arch) an admin's image schedule rebuilds with it
        (``schedules``; never from the API)."""
        manifest, secret_ids = await self._decide(who, body.manifest, body.secrets)
        for tag in body.tags:
            if not tag or len(tag) > 128 or not tag.isprintable():
                raise InvalidInput(f"tag {tag!r} must be 1-128 printable characters",
                                   field="tags")
        triggers = [(t.action, t.condition,
                     {k: v for k, v in t.model_dump(exclude={"action", "condition"}).items()
                      if v is not None}) for t in manifest.triggers]
        async with self.db.session() as s:
            job = await q.create_job(
                s, owner_id=who.token_id, owner_name=who.name, manifest=body.manifest,
                image=manifest.image, arch=manifest.arch, cache=manifest.cache, note=body.note,
                tags=body.tags,
                visibility=body.visibility, secret_ids=secret_ids,
                timeout_seconds=self.settings.jobs.timeout_minutes * 60,
                task_names=[t.name for t in manifest.tasks], triggers=triggers,
                queued=body.execute)
            job.group_id = group_id
            if rebuilds is not None:
                job.rebuilds_image, job.rebuilds_arch = rebuilds
            await s.flush()  # its tags, for the pools' conditions
            job.pool = await poolmatch.reserved_pool(s, self.settings.builders.pools, job,
                                                     release=release, named=pool)
        if body.execute:
            await self.bus.publish(QUEUED_TOPIC, str(job.id).encode())
        log.info("job %d submitted by %s (%s)", job.id, who.name, job.status)
        view = await self.view(job.id)
        return view.model_copy(update={"warnings": [str(w) for w in manifest.warnings]})

    async def get(self, who: Principal | None, job_id: int, key: str | None = None) -> JobOut:
        """The job, if ``who`` (with the unlisted job's ``key``) may read it; else NotFound."""
        return await self._view(await self._readable(who, job_id, key))

    async def with_manifest(self, who: Principal | None, job_id: int, key: str | None = None
                            ) -> tuple[JobOut, str, bool]:
        """The job (as ``get``), its manifest as submitted, and whether ``who`` may
        cancel and re-run it (its owner, an admin): what a job's page shows, one read."""
        job = await self._readable(who, job_id, key)
        return await self._view(job), job.manifest, may_change(who, job)

    async def manifest(self, who: Principal | None, job_id: int, key: str | None = None
                       ) -> str:
        return (await self._readable(who, job_id, key)).manifest

    async def search(self, who: Principal | None, *, status: str | None = None,
                     tag: str | None = None, mine: bool = False, limit: int = 50,
                     before: int | None = None, owner: str | None = None,
                     image: str | None = None, since: datetime | None = None,
                     until: datetime | None = None) -> JobPage:
        """The jobs ``who`` sees, newest first, filtered; ``owner`` is a token name,
        ``since``/``until`` bound the time of submission (``until`` excluded)."""
        if mine and who is None:
            raise InvalidInput("mine=true needs a token", field="mine")
        if since is not None and until is not None and until <= since:
            raise InvalidInput("until must be later than since", field="until")
        limit = max(1, min(limit, MAX_PAGE))
        async with self.db.session() as s:
            jobs = await q.list_jobs(
                s, visible_to=_visible_to(who),
                only_owner=who.token_id if mine and who else None, status=status, tag=tag,
                before=before, limit=limit + 1, owner_name=owner or None,
                image=image or None, since=_aware(since), until=_aware(until))
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return JobPage(jobs=await self._views(jobs, full=False),
                       next_before=jobs[-1].id if more else None)

    async def overview(self, who: Principal | None, recent: int = 10) -> Overview:
        """What the home page shows ``who``: of the jobs it may see, how many wait in
        the queue, those running, and the latest that failed."""
        async with self.db.session() as s:
            visible = _visible_to(who)
            queued = await q.count_jobs(s, visible_to=visible, status="queued")
            running = await q.list_jobs(s, visible_to=visible, status="running",
                                        limit=MAX_PAGE)
            failed = [job for status in ("failed", "timeout")
                      for job in await q.list_jobs(s, visible_to=visible, status=status,
                                                   limit=recent)]
        failed = sorted(failed, key=lambda j: j.id, reverse=True)[:recent]
        return Overview(queued=queued, running=await self._views(running, full=False),
                        failures=await self._views(failed, full=False))

    async def rerun(self, who: Principal, job_id: int, manifest: str | None = None
                    ) -> JobOut:
        """A new job like ``job_id`` (its tags, note and visibility), of its manifest or
        of ``manifest`` (an edited one); only who may change the job may run it again."""
        job = await self._changeable(who, job_id)
        async with self.db.session() as s:
            tags = (await q.tags_of(s, [job.id]))[job.id]
        note = job.note if job.note else None
        return await self.submit(who, JobSubmit(
            manifest=job.manifest if manifest is None else manifest, tags=tags, note=note,
            visibility=job.visibility))

    async def start(self, who: Principal, job_id: int) -> JobOut:
        await self._changeable(who, job_id)
        async with self.db.session() as s:
            started = await q.update_job_if(s, job_id, {"status": "pending"},
                                            status="queued", queued_at=utcnow())
        if not started:
            job = await self.view(job_id)
            raise Conflict(f"job {job_id} is {job.status}; only a pending job can be started")
        await self.bus.publish(QUEUED_TOPIC, str(job_id).encode())
        return await self.view(job_id)

    async def cancel(self, who: Principal, job_id: int) -> JobOut:
        await self._changeable(who, job_id)
        now = utcnow()
        reason = f"cancelled by {who.name}"
        async with self.db.session() as s:
            done = False
            for before in ("pending", "queued"):
                if await q.update_job_if(s, job_id, {"status": before}, status="cancelled",
                                         reason=reason, finished_at=now):
                    await q.settle_tasks(s, job_id, "skipped", now)
                    done = True
                    break
            running = not done and await q.update_job_if(
                s, job_id, {"status": "running"}, status="cancelled", reason=reason,
                finished_at=now, stop_requested=True)
            if running:  # what ran shows "cancelled" now, not what the kill makes of it
                await q.settle_tasks(s, job_id, "cancelled", now)
        if running:
            await self.bus.publish(control_topic(job_id), b"stop")
        if not done and not running:
            job = await self.view(job_id)
            raise Conflict(f"job {job_id} already ended ({job.status})")
        await self.ended(job_id)
        return await self.view(job_id)

    # --- groups ------------------------------------------------------------------

    async def create_group(self, who: Principal, body: JobGroupCreate) -> JobGroupOut:
        for job_id in body.job_ids:
            job = await self._changeable(who, job_id)
            if job.status != "pending" or job.group_id is not None:
                raise Conflict(f"job {job_id} must be pending and in no group to be grouped")
        async with self.db.session() as s:
            group = await q.create_group(s, who.token_id, body.note)
            for job_id in body.job_ids:
                (await q.get_job(s, job_id)).group_id = group.id
        if body.execute:
            await self.start_group(who, group.id)
        return await self.group(who, group.id)

    async def group(self, who: Principal | None, group_id: int) -> JobGroupOut:
        async with self.db.session() as s:
            group = await q.get_group(s, group_id)
            jobs = await q.list_jobs(s, visible_to=None, group_id=group_id, limit=MAX_PAGE)
        jobs = [j for j in reversed(jobs) if may_read(who, j)]
        if not jobs and not is_admin(who) and (who is None or who.token_id != group.owner_id):
            raise NotFound(f"There is no job group {group_id}.", kind="job_group",
                           name=str(group_id))
        return JobGroupOut(id=group.id, note=group.note, created_at=group.created_at,
                           jobs=await self._views(jobs, full=False))

    async def start_group(self, who: Principal, group_id: int) -> JobGroupOut:
        for job in (await self.group(who, group_id)).jobs:
            if job.status == "pending":
                await self.start(who, job.id)
        return await self.group(who, group_id)

    async def cancel_group(self, who: Principal, group_id: int) -> JobGroupOut:
        for job in (await self.group(who, group_id)).jobs:
            if job.status not in FINAL_STATUSES:
                with contextlib.suppress(Conflict):  # it ended meanwhile
                    await self.cancel(who, job.id)
        return await self.group(who, group_id)

    # --- the end, and following ---------------------------------------------------

    async def ended(self, job_id: int) -> None:
        """Tell followers the job ended and fire its triggers (in the background)."""
        async with self.db.session() as s:
            job = await q.get_job(s, job_id)
        view = await self._view(job)
        await self.logs.publish(job_id, {"type": "job", "status": view.status,
                                         "reason": view.reason})
        if self._tasks is not None:
            self._tasks.start_soon(self._fire, view, job.owner_id)
        else:
            await self._fire(view, job.owner_id)

    async def _fire(self, view: JobOut, owner_id: int) -> None:
        try:
            await self.triggers.fire(view, owner_id)
        except Exception:  # a bug in delivery must not take the server's task group down
            log.exception("triggers of job %d failed", view.id)

    async def follow(self, who: Principal | None, job_id: int, task: str | None = None,
                     only_task: bool = False, heartbeat: float = 15.0,
                     positions: logs_mod.Positions | None = None, key: str | None = None
                     ) -> AsyncGenerator[tuple[str, dict[str, object]], None]:
        """The job's events: stored log chunks, then live ones, task and job changes.

        Yields ``(event, data)``: ``log`` {task, seq, text}, ``task`` {name, status},
        ``job`` {status, reason}, ``ping`` {} every ``heartbeat`` seconds of silence,
        and last ``end`` {status}. With ``only_task``, logs of ``task`` alone (None:
        the setup log). ``positions`` (where a resumed follower was, see
        ``logs.Positions``) is advanced past each log event before it is yielded.
        """
        job = await self._readable(who, job_id, key)
        positions = positions if positions is not None else logs_mod.Positions()
        async with self.bus.subscribe(logs_mod.job_topic(job_id)) as sub:
            view = await self.view(job_id)
            names: list[str | None] = [None, *(t.name for t in view.tasks)]
            if only_task:
                if task is not None and task not in names:
                    raise NotFound(f"Job {job_id} has no task {task!r}.", kind="task",
                                   name=task)
                names = [task]
            positions.start(names)
            sent: dict[str | None, int] = {}

            async def stored(name: str | None) -> AsyncGenerator[tuple[str, dict[str, object]]]:
                # What the store has of a log past the follower's position.
                async for chunk in self.logs.replay(job.id, name, positions.offsets[name]):
                    sent[name] = chunk.seq + 1
                    if chunk.data is not None:
                        positions.offsets[name] = chunk.end
                        yield "log", {"task": name, "seq": chunk.seq,
                                      "text": chunk.data.decode(errors="replace")}

            for name in names:
                async for event in stored(name):
                    yield event
            yield "job", {"status": view.status, "reason": view.reason}
            status = view.status
            while status not in FINAL_STATUSES:
                raw = await sub.get(heartbeat)
                if raw is None:
                    status = (await self.view(job_id)).status  # a lost "job" message
                    yield "ping", {}
                    continue
                event = json.loads(raw)
                kind = event.pop("type")
                if kind == "log":
                    name, seq = event["task"], int(event["seq"])
                    if name not in names or seq < sent.get(name, 0):
                        continue
                    if seq > sent.get(name, 0):  # a live message was lost: the store has it
                        async for missed in stored(name):
                            yield missed
                        continue
                    sent[name] = seq + 1
                    positions.offsets[name] += int(event.pop("size"))
                elif kind == "task" and only_task:
                    continue
                elif kind == "job":
                    status = event["status"]
                yield kind, event
            yield "end", {"status": status}

