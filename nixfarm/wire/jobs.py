"""Wire models of the jobs API (``/api/v1/jobs``, ``/api/v1/job-groups``, secrets and
the webhook key): what users and the CLI send and get back.

Each model says its route and the scope it needs. Field names are the JSON names.
"""
from __future__ import annotations

from datetime import datetime
from typing import Literal, get_args

from pydantic import Field

from nixfarm.wire.base import Id, Int32, Wire
from nixfarm.wire.values import Base64Text

JobStatus = Literal["pending", "queued", "running", "success", "failed", "timeout", "cancelled",
                    "interrupted"]
#: A task that was running when its job was cancelled or interrupted shows that.
TaskStatus = Literal["pending", "running", "success", "failed", "skipped", "cancelled",
                     "interrupted"]
Visibility = Literal["public", "unlisted", "private"]
SecretKind = Literal["ssh_key", "pgp_key", "file"]

FINAL_STATUSES: frozenset[str] = frozenset(
    {"success", "failed", "timeout", "cancelled", "interrupted"})
JOB_STATUSES: tuple[str, ...] = get_args(JobStatus)
#: The most jobs one page of ``GET /api/v1/jobs`` lists.
MAX_PAGE = 200


# --- jobs (users) ----------------------------------------------------------------


class JobSubmit(Wire):
    """POST /api/v1/jobs (jobs:submit)."""

    manifest: str = Field(description="The manifest's YAML text.")
    tags: list[str] = Field(default=[], max_length=20)
    note: str | None = Field(default=None, max_length=4096)
    #: False: the job waits as ``pending`` until ``POST /api/v1/jobs/ID/start``.
    execute: bool = True
    #: private: the owner and admins alone; unlisted: whoever has the job's URL (it
    #: carries a key); public: anyone, and listed.
    visibility: Visibility = "private"
    #: False: the manifest's ``secrets`` are not delivered to this job.
    secrets: bool = True


class JobRerun(Wire):
    """POST /api/v1/jobs/ID/rerun (jobs:submit, the job's owner or an admin)."""

    #: An edited manifest; null runs the job's own again.
    manifest: str | None = None


class TaskOut(Wire):
    name: str
    status: TaskStatus
    exit_code: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: GET: the task's log as text/plain (Range supported).
    log_url: str


class ArtifactOut(Wire):
    name: str
    path: str
    size: int
    url: str
    created_at: datetime
    #: SHA-256 (hex) of the bytes the runner uploaded; None for older artifacts.
    sha256: str | None = None


class DeliveryOut(Wire):
    attempt: int
    ok: bool
    detail: str
    created_at: datetime


class TriggerOut(Wire):
    action: Literal["email", "webhook"]
    condition: Literal["success", "failure", "always"]
    status: Literal["pending", "delivered", "failed", "skipped"]
    details: dict[str, str]
    deliveries: list[DeliveryOut] = []


class JobOut(Wire):
    """GET /api/v1/jobs/ID; also the body of a webhook trigger."""

    id: int
    status: JobStatus
    owner: str
    image: str
    arch: str | None
    note: str | None
    tags: list[str]
    visibility: Visibility
    #: An unlisted job's key: its URLs carry it (``?key=``); reading needs it.
    key: str | None = None
    reason: str | None
    group_id: int | None
    runner: str | None
    #: The builder pool it is reserved for: only that pool's builders run it.
    pool: str | None = None
    created_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    #: Until when the ended job's sandbox is kept for ``nixfarm shell``; null: not held.
    held_until: datetime | None = None
    url: str
    setup_log_url: str
    tasks: list[TaskOut]
    artifacts: list[ArtifactOut] = []
    triggers: list[TriggerOut] = []
    #: Only in the answer to a submit: what the manifest has that is ignored (unknown
    #: keys), one line each with its key, line and column.
    warnings: list[str] = []


class ManifestCheck(Wire):
    """POST /api/v1/manifests/check (jobs:submit): is this manifest one the server would
    run for this token? A refusal is the 400 a submit would get, word for word."""

    manifest: str = Field(description="The manifest's YAML text.")


class ManifestChecked(Wire):
    """The answer to POST /api/v1/manifests/check when a submit would be accepted."""

    image: str
    tasks: list[str]
    #: What a submit would warn of (unknown keys, ignored).
    warnings: list[str] = []


class JobPage(Wire):
    """GET /api/v1/jobs?status=&tag=&mine=&owner=&image=&since=&until=&limit=&before=
    (newest first)."""

    jobs: list[JobOut]
    #: Pass as ``before`` to get the next page; null on the last one.
    next_before: int | None


class JobGroupCreate(Wire):
    """POST /api/v1/job-groups (jobs:submit): group pending jobs the caller owns."""

    job_ids: list[Id] = Field(min_length=1, max_length=100)
    note: str | None = None
    execute: bool = True


class JobGroupOut(Wire):
    id: int
    note: str | None
    created_at: datetime
    jobs: list[JobOut]


class WebhookKey(Wire):
    """GET /api/v1/webhook-key (jobs:submit): the caller's webhook signing key.

    A webhook trigger's POST carries ``X-Payload-Nonce`` and ``X-Payload-Signature``:
    base64 of HMAC-SHA256(key, body + nonce), the key being the hex-decoded ``key``.
    """

    key: str
    algorithm: Literal["hmac-sha256"] = "hmac-sha256"


# --- secrets ---------------------------------------------------------------------


class SecretCreate(Wire):
    """POST /api/v1/secrets (jobs:submit)."""

    name: str = Field(min_length=3, max_length=512)
    kind: SecretKind
    #: The value, base64.
    data: Base64Text
    #: For ``file``: where it goes in the sandbox (``~/`` is the build user's home).
    path: str | None = None
    #: For ``file``: its mode, e.g. 0o600 (as a number).
    mode: Int32 | None = None


class SecretOut(Wire):
    """GET /api/v1/secrets; DELETE /api/v1/secrets/UUID-OR-NAME. Never the value."""

    uuid: str
    name: str
    kind: SecretKind
    path: str | None
    mode: int | None
    created_at: datetime
