"""Wire models of the runner protocol: what runners and the server say to each other.

In order (all under ``/api/v1/runners``, scope ``runner``):

1. ``POST /api/v1/runners`` ``RunnerRegister`` -> ``RunnerOut``: once at start-up
   (idempotent per token and name); the answer says the lease and heartbeat timing.
2. ``POST /{runner}/claim`` ``ClaimRequest`` -> 200 ``Assignment`` or 204 after
   ``wait`` seconds with nothing to do. One long-poll per free slot.
3. While the job runs, a loop of ``POST /{runner}/jobs/{job}/heartbeat``
   ``HeartbeatRequest`` -> ``HeartbeatResponse``; the server holds each call up to
   ``wait`` seconds and answers at once with ``stop: true`` when the job is cancelled
   or timed out: the runner kills the job's processes and reports ``finish``. A 409
   answer means the job is no longer this runner's (its lease expired): kill it, and
   report nothing more.
4. ``POST /{runner}/jobs/{job}/log?seq=N`` (the setup log: everything before the
   first task) and ``POST /{runner}/jobs/{job}/tasks/{task}/log?seq=N`` (a task's),
   body raw bytes (at most ``MAX_LOG_CHUNK``); ``seq`` counts from 0 per log, and a
   repeated ``seq`` is ignored, so a retry after a timeout is safe. Send whole lines
   when possible: secret values are masked per chunk. -> ``LogAccepted``.
5. ``POST /{runner}/jobs/{job}/tasks/{task}`` ``TaskReport``: ``running`` when a task
   starts, then ``success``/``failed``/``skipped`` with its exit code.
6. ``PUT /{runner}/jobs/{job}/artifacts/{filename}?path=PATH``, body the file ->
   ``ArtifactOut``.
7. ``POST /{runner}/jobs/{job}/finish`` ``FinishRequest`` -> ``JobOut``: the job's
   result; tasks still pending become ``skipped`` (``complete-build`` is a
   ``success`` finish with tasks left). A job that already ended (cancelled, timed
   out, lost) keeps its status. ``interrupted``: the runner stopped (its host shuts
   down) and ended the job after a grace period; the server queues it again if this was
   its first run, and ends it ``interrupted`` otherwise.

A runner that registers again (it restarted) holds no job: the jobs the server still
has on it are settled at once, as ``interrupted`` ones.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from nixfarm.wire.base import Int32, Wire
from nixfarm.wire.jobs import ArtifactOut, SecretKind

#: The largest log chunk a runner may send at once.
MAX_LOG_CHUNK = 1024 * 1024


class RunnerRegister(Wire):
    """POST /api/v1/runners (runner)."""

    name: str = Field(min_length=1, max_length=100)
    arch: str = "x86_64"
    #: Image names this runner can boot (``nix``, ``alpine/3.19``, ...).
    images: list[str]
    #: Sandbox kinds it has (``bwrap``, ``vm``).
    sandboxes: list[str] = []
    #: How its VMs run: ``kvm``, ``tcg`` (software emulation), or "" (no VMs).
    accelerator: str = Field(default="", max_length=32)
    slots: int = Field(default=1, ge=1, le=256)
    version: str = ""
    #: True: the same runner, still running, offers anew (say, an image was installed):
    #: its jobs go on. False: it (re)starts, and jobs the server thinks it runs ended.
    refresh: bool = False
    #: Per installed disk image, which build it is and how the last new build went
    #: ("build of job 12, 2026-12-03 17:20 UTC"; "job 14 refused: ..."), for people.
    image_builds: dict[str, str] = Field(default={}, max_length=256)


class RunnerOut(Wire):
    id: int
    name: str
    arch: str
    images: list[str]
    sandboxes: list[str]
    #: How its VMs run: ``kvm``, ``tcg`` (software emulation), or "" (no VMs).
    accelerator: str = ""
    #: Per installed disk image: its build and the last new build's fate (see register).
    image_builds: dict[str, str] = {}
    slots: int
    #: A job whose runner is silent this long is taken from it.
    lease_seconds: float
    #: How long the server holds a heartbeat; heartbeat again as soon as one returns.
    heartbeat_wait: float
    last_seen_at: datetime


class ClaimRequest(Wire):
    """POST /api/v1/runners/ID/claim (runner): 200 ``Assignment`` or 204 after ``wait``."""

    wait: float = Field(default=20.0, ge=0, le=60)


class SecretValue(Wire):
    """A secret as delivered to the one runner running a job that may use it."""

    uuid: str
    name: str
    kind: SecretKind
    path: str | None
    mode: int | None
    #: The value, base64.
    data: str


class CacheGrant(Wire):
    """Where the job pushes its Nix build outputs and logs (``nix copy --to``)."""

    name: str
    #: ``http://server/cache/NAME``: Nix's cache protocol, the token as basic auth.
    url: str
    #: A token that may push to this cache only, and expires with the job.
    token: str
    public_key: str


class JobLimits(Wire):
    """A job's quotas (``jobs.*`` of the farm's settings), enforced by the runner."""

    home_bytes: int = 1024**3
    log_bytes: int = 64 * 1024**2
    artifacts: int = 8
    artifact_bytes: int = 1024**3


class Assignment(Wire):
    """A claimed job: everything the runner needs, and nothing it may not see."""

    job_id: int
    #: The manifest, validated, as data (builds.sr.ht shape: tasks as one-key mappings).
    manifest: dict[str, object]
    #: The text as submitted, for the record.
    manifest_text: str
    image: str
    arch: str | None
    tasks: list[str]
    secrets: list[SecretValue]
    network: bool
    #: The job must have finished by then; the server ends it ``timeout`` after.
    deadline: datetime
    lease_seconds: float
    heartbeat_wait: float
    cache: CacheGrant | None
    job_url: str
    #: 1 on the first claim; 2 if the job was re-queued (a runner lost before any
    #: task, or an interrupted run).
    attempt: int
    #: A re-run's logs go on after the first run's: the next ``seq`` of each log that
    #: has chunks (the setup log as "", tasks by name); absent ones start at 0.
    resume_logs: dict[str, int] = {}
    limits: JobLimits = JobLimits()
    #: Seconds a failed job's sandbox (or any ``shell: true`` job's) is kept for
    #: ``nixfarm shell`` after its end; 0: never kept.
    shell_hold_seconds: float = 0.0


class HeartbeatRequest(Wire):
    """POST /api/v1/runners/ID/jobs/JOB/heartbeat (runner)."""

    #: Hold the answer up to this long unless the job must stop (capped by the server).
    wait: float = Field(default=0.0, ge=0, le=60)


class ShellRequest(Wire):
    key: str
    #: None: an interactive login shell; else the command, run on the pty.
    command: list[str] | None = None
    rows: int = 24
    cols: int = 80
    #: ``nixfarm ssh``: authorise this OpenSSH public key for the build user and relay
    #: the session's bytes to the sandbox's sshd (``command`` is then None).
    public_key: str | None = None


class HeartbeatResponse(Wire):
    #: Kill the job's processes now, then ``finish``.
    stop: bool
    #: Why: ``cancelled`` or ``timeout``; null while running.
    reason: str | None
    lease_expires_at: datetime
    #: While the ended job's sandbox is held: shell sessions waiting for the runner to
    #: connect (``GET .../shells/KEY`` as a WebSocket), by key.
    shells: list[ShellRequest] = []
    #: While held: the hold is over (its time ran out): shut the sandbox down, release.
    release: bool = False


class LogAccepted(Wire):
    log: str
    seq: int
    #: False when this ``seq`` was already stored (a retry).
    stored: bool


class TaskReport(Wire):
    """POST /api/v1/runners/ID/jobs/JOB/tasks/NAME (runner)."""

    status: Literal["running", "success", "failed", "skipped"]
    exit_code: Int32 | None = None


class FinishRequest(Wire):
    """POST /api/v1/runners/ID/jobs/JOB/finish (runner)."""

    status: Literal["success", "failed", "interrupted"]
    #: One sentence: what failed (``task 'build' exited with 2``).
    reason: str | None = None
    #: The step that failed (boot, environment, secrets, repositories, packages,
    #: sources, tasks, artifacts, cache push, shutdown).
    failed_step: str | None = None
    #: The runner keeps the job's sandbox for shells (``Assignment.shell_hold_seconds``).
    held: bool = False


class ImageBuildsRequest(Wire):
    """POST /api/v1/runners/ID/image-builds (runner): the latest image build of each
    image this runner offers whose job is newer than ``after``; when there is none, the
    server holds the call up to ``wait`` seconds for one (bus topic ``images.built``)."""

    after: int = Field(default=0, ge=0)
    wait: float = Field(default=30.0, ge=0, le=60)


class ImageBuildOut(Wire):
    """An image an admin's image schedule rebuilt (a job that succeeded): runners that
    serve ``image`` fetch its artifacts (``url``: the runner's own route), check and
    install it (docs/images.md, "Runners install new builds")."""

    image: str
    arch: str
    job_id: int
    finished_at: datetime
    artifacts: list[ArtifactOut]


class ImageBuildsOut(Wire):
    builds: list[ImageBuildOut]
