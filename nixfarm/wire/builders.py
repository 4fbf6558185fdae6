"""Wire models of builders, pools and enrollment.

- ``GET /api/v1/builders`` (admin) -> ``list[BuilderOut]``; ``?all=true`` includes the
  destroyed; ``GET /api/v1/builders/{id}`` -> ``BuilderDetail`` (with its decisions);
  ``DELETE /api/v1/builders/{id}`` (admin) destroys it now -> ``BuilderOut``.
- ``GET /api/v1/pools`` (admin) -> ``list[PoolOut]``;
  ``GET /api/v1/builders/decisions?pool=NAME`` -> ``list[DecisionOut]``, newest first.
- ``POST /api/v1/builders/enroll`` ``EnrollRequest`` -> 201 ``Enrollment``: no
  Authorization header; the one-time enrollment token is the credential.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from nixfarm.wire.base import Wire


class BuilderOut(Wire):
    id: int
    name: str
    pool: str
    provider: str
    #: The provider's id of its machine (null until the provider accepted the create).
    instance_id: str | None
    #: creating, booting, ready, draining, held, destroyed
    state: str
    ip: str | None
    region: str
    plan: str
    hourly_price: float
    #: Why it drains, is held or was destroyed.
    reason: str | None
    last_job_id: int | None
    #: The runner it registered as, once it did.
    runner_id: int | None
    #: The iPXE script its machine chain-loads.
    boot_url: str
    created_at: datetime
    enrolled_at: datetime | None
    idle_since: datetime | None
    hold_until: datetime | None
    destroyed_at: datetime | None


class DecisionOut(Wire):
    id: int
    pool: str
    builder_id: int | None
    #: create, enroll, refuse, drain, hold, destroy, reap, keep (at a stop), fail
    action: str
    reason: str
    created_at: datetime


class BuilderDetail(BuilderOut):
    decisions: list[DecisionOut]


class PoolOut(Wire):
    name: str
    provider: str
    region: str
    plan: str
    image: str
    hourly_price: float
    max_instances: int
    max_hourly_spend: float | None
    arch: str
    job_images: list[str]
    job_tags: list[str]
    caches: list[str]
    trusted: bool
    lifecycle: str
    idle_timeout_seconds: float
    max_uptime_seconds: float
    boot_timeout_seconds: float
    #: Builders whose machines exist now, and what they cost per hour together.
    builders: int
    hourly_spend: float
    #: Queued jobs this pool would take.
    queued: int


class EnrollRequest(Wire):
    """POST /api/v1/builders/enroll (no Authorization: the token is the credential)."""

    token: str = Field(min_length=1, max_length=200)


class Enrollment(Wire):
    """What a builder gets for its enrollment token: its own runner credential."""

    builder_id: int
    #: Its name: the runner's name to register with.
    name: str
    pool: str
    server: str
    #: A runner token that claims only the pool's jobs; revoked when the builder goes.
    runner_token: str
    runner_token_expires_at: datetime
    arch: str
    #: The images of the jobs the pool takes: the runner offers these.
    images: list[str]
