"""Queries on CI jobs and their tasks, tags, artifacts and triggers.

State changes that race (a runner claiming a job while another does, a lease expiring
while the runner finishes) are single conditional UPDATEs (``... WHERE status =
'queued'``) whose row count says who won: correct on SQLite and PostgreSQL alike,
without row locks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from nixfarm.db.models import (
    Artifact,
    Job,
    JobGroup,
    JobTag,
    Runner,
    Task,
    Trigger,
    TriggerDelivery,
    utcnow,
)
from nixfarm.errors import NotFound


async def create_job(
    session: AsyncSession,
    *,
    owner_id: int,
    owner_name: str,
    manifest: str,
    image: str,
    arch: str | None,
    cache: str | None,
    note: str | None,
    tags: Sequence[str],
    visibility: str,
    secret_ids: Sequence[str],
    timeout_seconds: float,
    task_names: Sequence[str],
    triggers: Sequence[tuple[str, str, dict[str, str]]],
    queued: bool,
) -> Job:
    """A new job, ``queued`` or ``pending``, with its tasks, tags and triggers."""
    now = utcnow()
    job = Job(
        owner_id=owner_id, owner_name=owner_name, manifest=manifest, image=image, arch=arch,
        cache=cache, note=note, visibility=visibility, secret_ids=list(secret_ids),
        timeout_seconds=timeout_seconds, status="queued" if queued else "pending",
        queued_at=now if queued else None, attempts=0, stop_requested=False, created_at=now,
    )
    session.add(job)
    await session.flush()
    session.add_all(JobTag(job_id=job.id, tag=tag) for tag in dict.fromkeys(tags))
    session.add_all(
        Task(job_id=job.id, position=i, name=name, status="pending")
        for i, name in enumerate(task_names)
    )
    session.add_all(
        Trigger(job_id=job.id, action=action, condition=condition, details=details,
                status="pending")
        for action, condition, details in triggers
    )
    await session.flush()
    return job


async def get_job(session: AsyncSession, job_id: int) -> Job:
    job = await session.get(Job, job_id)
    if job is None:
        raise NotFound(f"There is no job {job_id}.", kind="job", name=str(job_id))
    return job


async def tasks_of(session: AsyncSession, job_ids: Iterable[int]) -> dict[int, list[Task]]:
    ids = list(job_ids)
    out: dict[int, list[Task]] = {i: [] for i in ids}
    if ids:
        rows = await session.scalars(
            sa.select(Task).where(Task.job_id.in_(ids)).order_by(Task.job_id, Task.position))
        for task in rows:
            out[task.job_id].append(task)
    return out


async def tags_of(session: AsyncSession, job_ids: Iterable[int]) -> dict[int, list[str]]:
    ids = list(job_ids)
    out: dict[int, list[str]] = {i: [] for i in ids}
    if ids:
        rows = await session.execute(
            sa.select(JobTag.job_id, JobTag.tag).where(JobTag.job_id.in_(ids))
            .order_by(JobTag.tag))
        for job_id, tag in rows:
            out[job_id].append(tag)
    return out


async def runner_names(session: AsyncSession, runner_ids: Iterable[int | None]) -> dict[int, str]:
    ids = {i for i in runner_ids if i is not None}
    if not ids:
        return {}
    rows = await session.execute(sa.select(Runner.id, Runner.name).where(Runner.id.in_(ids)))
    return {rid: name for rid, name in rows}


async def artifacts_of(session: AsyncSession, job_id: int) -> list[Artifact]:
    return list(await session.scalars(
        sa.select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.id)))


async def triggers_of(
    session: AsyncSession, job_id: int
) -> list[tuple[Trigger, list[TriggerDelivery]]]:
    triggers = list(await session.scalars(
        sa.select(Trigger).where(Trigger.job_id == job_id).order_by(Trigger.id)))
    deliveries: dict[int, list[TriggerDelivery]] = {t.id: [] for t in triggers}
    if triggers:
        rows = await session.scalars(
            sa.select(TriggerDelivery).where(TriggerDelivery.trigger_id.in_(deliveries))
            .order_by(TriggerDelivery.id))
        for d in rows:
            deliveries[d.trigger_id].append(d)
    return [(t, deliveries[t.id]) for t in triggers]


async def list_jobs(
    session: AsyncSession,
    *,
    visible_to: int | None,
    only_owner: int | None = None,
    status: str | None = None,
    tag: str | None = None,
    group_id: int | None = None,
    before: int | None = None,
    limit: int = 50,
    owner_name: str | None = None,
    image: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[Job]:
    """Jobs newest first. ``visible_to``: a token id that sees its own jobs and public
    ones; None sees everything (admin). ``since``/``until`` bound ``created_at``
    (``until`` excluded)."""
    stmt = _filtered(sa.select(Job), visible_to=visible_to, only_owner=only_owner,
                     status=status, tag=tag, group_id=group_id, before=before,
                     owner_name=owner_name, image=image, since=since, until=until)
    return list(await session.scalars(stmt.order_by(Job.id.desc()).limit(limit)))


async def count_jobs(session: AsyncSession, *, visible_to: int | None,
                     status: str | None = None) -> int:
    """How many jobs ``visible_to`` sees (as ``list_jobs``), of ``status``."""
    stmt = _filtered(sa.select(sa.func.count(Job.id)), visible_to=visible_to, status=status)
    return int(await session.scalar(stmt) or 0)


def _filtered(stmt: Any, *, visible_to: int | None, only_owner: int | None = None,
              status: str | None = None, tag: str | None = None,
              group_id: int | None = None, before: int | None = None,
              owner_name: str | None = None, image: str | None = None,
              since: datetime | None = None, until: datetime | None = None) -> Any:
    if visible_to is not None:
        stmt = stmt.where(sa.or_(Job.owner_id == visible_to, Job.visibility == "public"))
    if only_owner is not None:
        stmt = stmt.where(Job.owner_id == only_owner)
    if status:
        stmt = stmt.where(Job.status == status)
    if tag:
        stmt = stmt.where(Job.id.in_(sa.select(JobTag.job_id).where(JobTag.tag == tag)))
    if group_id is not None:
        stmt = stmt.where(Job.group_id == group_id)
    if before is not None:
        stmt = stmt.where(Job.id < before)
    if owner_name:
        stmt = stmt.where(Job.owner_name == owner_name)
    if image:
        stmt = stmt.where(Job.image == image)
    if since is not None:
        stmt = stmt.where(Job.created_at >= since)
    if until is not None:
        stmt = stmt.where(Job.created_at < until)
    return stmt


async def update_job_if(
    session: AsyncSession, job_id: int, where: dict[str, Any], **values: Any
) -> bool:
    """Set ``values`` on the job if its columns equal ``where``; whether it did."""
    stmt = sa.update(Job).where(Job.id == job_id).values(**values)
    for column, value in where.items():
        attribute = getattr(Job, column)
        stmt = stmt.where(attribute.is_(None) if value is None else attribute == value)
    result = await session.execute(stmt.execution_options(synchronize_session=False))
    changed: bool = result.rowcount == 1  # type: ignore[attr-defined]
    return changed


async def settle_tasks(session: AsyncSession, job_id: int, running_to: str,
                       now: datetime) -> None:
    """At a job's end: running tasks become ``running_to``, pending ones ``skipped``."""
    await session.execute(
        sa.update(Task).where(Task.job_id == job_id, Task.status == "running")
        .values(status=running_to, finished_at=now)
        .execution_options(synchronize_session=False))
    await session.execute(
        sa.update(Task).where(Task.job_id == job_id, Task.status == "pending")
        .values(status="skipped")
        .execution_options(synchronize_session=False))


async def reset_tasks(session: AsyncSession, job_id: int) -> None:
    """A job queued again: its tasks are pending again, as before its first run."""
    await session.execute(
        sa.update(Task).where(Task.job_id == job_id)
        .values(status="pending", exit_code=None, started_at=None, finished_at=None)
        .execution_options(synchronize_session=False))


async def get_task(session: AsyncSession, job_id: int, name: str) -> Task:
    task = await session.scalar(sa.select(Task).where(Task.job_id == job_id, Task.name == name))
    if task is None:
        raise NotFound(f"Job {job_id} has no task {name!r}.", kind="task", name=name)
    return task


async def create_group(session: AsyncSession, owner_id: int, note: str | None) -> JobGroup:
    group = JobGroup(owner_id=owner_id, note=note)
    session.add(group)
    await session.flush()
    return group


async def get_group(session: AsyncSession, group_id: int) -> JobGroup:
    group = await session.get(JobGroup, group_id)
    if group is None:
        raise NotFound(f"There is no job group {group_id}.", kind="job_group",
                       name=str(group_id))
    return group
