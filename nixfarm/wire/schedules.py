"""Wire models of scheduled jobs (``/api/v1/schedules``, ``jobs:submit``)."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from nixfarm.wire.base import Wire


class ScheduleCreate(Wire):
    """POST /api/v1/schedules (jobs:submit): submit ``manifest`` at each slot of ``cron``."""

    cron: str = Field(max_length=200, description=(
        "minute hour day-of-month month day-of-week, as cron(8) has it; a sixth field, "
        "seconds, may follow."))
    manifest: str = Field(description="The manifest's YAML text.")
    note: str | None = Field(default=None, max_length=4096)
    #: An image rebuild (``nixfarm image schedule``; admin only): the catalogue image its
    #: jobs build. Runners that serve it install each successful job's image.
    image: str | None = Field(default=None, min_length=1, max_length=128)
    arch: str = Field(default="x86_64", min_length=1, max_length=32)


class ScheduleOut(Wire):
    id: int
    cron: str
    note: str | None = None
    owner: str
    created_at: datetime
    #: The last slot that fired (or, before the first, the last one before creation).
    last_slot: datetime
    #: When it fires next (UTC).
    next_at: datetime
    last_job_id: int | None = None
    #: Why the last slot made no job, if it did not.
    last_error: str | None = None
    #: The image (and arch) it rebuilds, if it is an image rebuild.
    image: str | None = None
    arch: str | None = None
