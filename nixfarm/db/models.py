"""The tables, as typed SQLAlchemy models.

The binary-cache tables separate what is stored from who may see it:

    nars ──────────────< cache_nars >────────── caches
     ▲   (a compressed NAR file,        (membership: which
     │    content-addressed by           caches it was uploaded
     │    file_hash, stored once)        into; private caches
     │                                   must not leak others')
     └──────────────── cache_paths ──────────── caches
                       (a narinfo: one store path in one cache)

A NAR uploaded to two caches is one ``nars`` row and one stored object. The migration
in ``migrations/versions`` must describe exactly these models; a test compares them.

Every timestamp is an aware UTC ``datetime``: SQLite has no time zones, so
``UTCDateTime`` converts on the way in and labels on the way out.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Named constraints let later migrations (SQLite batch mode included) refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timestamp that is always an aware UTC datetime in Python."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass an aware one")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime}


class Cache(Base):
    """A signed binary cache; its signing key never leaves the server."""

    __tablename__ = "caches"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(63), unique=True)
    private: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    #: Nix secret key, ``<key name>:<base64 of the 64-byte ed25519 secret>``.
    secret_key: Mapped[str] = mapped_column(sa.Text)
    #: Nix public key, ``<key name>:<base64 of the 32-byte ed25519 public key>``.
    public_key: Mapped[str] = mapped_column(sa.Text)
    #: nix-cache-info Priority: lower is preferred by Nix.
    priority: Mapped[int] = mapped_column(default=40, server_default=sa.text("40"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: Garbage collection keeps what was uploaded in this many days (and the closures
    #: of those paths), removing the rest periodically; None keeps everything.
    retention_days: Mapped[float | None] = mapped_column(sa.Float)


class Nar(Base):
    """A stored, verified, compressed NAR file, shared by every cache it was uploaded to."""

    __tablename__ = "nars"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: ``sha256:<nix32>`` of the compressed file: its identity and its URL.
    file_hash: Mapped[str] = mapped_column(sa.String(80), unique=True)
    file_size: Mapped[int] = mapped_column(sa.BigInteger)
    compression: Mapped[str] = mapped_column(sa.String(16))
    nar_hash: Mapped[str] = mapped_column(sa.String(80))
    nar_size: Mapped[int] = mapped_column(sa.BigInteger)
    #: Where the object store keeps the file.
    storage_key: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CacheNar(Base):
    """Membership: this NAR file was uploaded into this cache."""

    __tablename__ = "cache_nars"

    cache_id: Mapped[int] = mapped_column(
        sa.ForeignKey("caches.id", ondelete="CASCADE"), primary_key=True
    )
    nar_id: Mapped[int] = mapped_column(
        sa.ForeignKey("nars.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class CachePath(Base):
    """One store path in one cache: everything its narinfo says."""

    __tablename__ = "cache_paths"
    __table_args__ = (sa.UniqueConstraint("cache_id", "store_hash"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    cache_id: Mapped[int] = mapped_column(sa.ForeignKey("caches.id", ondelete="CASCADE"))
    #: The 32-character nix32 hash part of the store path's basename.
    store_hash: Mapped[str] = mapped_column(sa.String(32))
    store_path: Mapped[str] = mapped_column(sa.Text)
    # No cascade: a NAR may only go once no path needs it (garbage collection's job).
    nar_id: Mapped[int] = mapped_column(sa.ForeignKey("nars.id"), index=True)
    nar_hash: Mapped[str] = mapped_column(sa.String(80))
    nar_size: Mapped[int] = mapped_column(sa.BigInteger)
    #: Space-separated basenames, as in the narinfo ``References:`` line.
    references: Mapped[str] = mapped_column(sa.Text, default="")
    deriver: Mapped[str | None] = mapped_column(sa.Text)
    ca: Mapped[str | None] = mapped_column(sa.Text)
    #: Space-separated ``<key name>:<base64>`` signatures (the server's own).
    sigs: Mapped[str] = mapped_column(sa.Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    # Every narinfo needs the file's URL, hash and size: fetch them in the same query
    # (and async sessions cannot lazy-load anyway).
    nar: Mapped[Nar] = relationship(lazy="joined", innerjoin=True)

    @property
    def reference_names(self) -> list[str]:
        return self.references.split()

    @property
    def sig_list(self) -> list[str]:
        return self.sigs.split()


class BuildLog(Base):
    """The build log of one derivation, uploaded into a cache."""

    __tablename__ = "build_logs"
    __table_args__ = (sa.UniqueConstraint("cache_id", "drv"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    cache_id: Mapped[int] = mapped_column(sa.ForeignKey("caches.id", ondelete="CASCADE"))
    #: Basename of the derivation, ``<hash>-<name>.drv``.
    drv: Mapped[str] = mapped_column(sa.Text)
    storage_key: Mapped[str] = mapped_column(sa.Text)
    size: Mapped[int] = mapped_column(sa.BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Token(Base):
    """An API token. Only a hash of its secret is stored; the secret is shown once."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    # SHA-256 hex of the secret. A fast hash is right here: the secret is 32 random
    # bytes, so there is nothing to brute-force that a slow password hash would protect,
    # and a fast, deterministic hash lets us find the token by an indexed lookup.
    secret_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    #: Scope strings (see ``nixfarm.auth``).
    scopes: Mapped[list[str]] = mapped_column(sa.JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column()
    revoked: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    last_used_at: Mapped[datetime | None] = mapped_column()
    #: A runner token's pool: the only images and job owners (token names, as
    #: ``Job.owner_name`` records them) whose jobs its runners claim; None is any.
    runner_images: Mapped[list[str] | None] = mapped_column(sa.JSON)
    runner_owners: Mapped[list[str] | None] = mapped_column(sa.JSON)
    #: Whether its runners may receive secrets; an untrusted runner never claims a job
    #: that uses some (it stays queued for a trusted one).
    trusted: Mapped[bool] = mapped_column(default=True, server_default=sa.true())


# --- CI jobs -----------------------------------------------------------------------
#
#   job_groups ─< jobs ─< tasks           runners ─< jobs (the one running it)
#                  │ ├──< job_tags          secrets (per owner, encrypted at rest)
#                  │ ├──< artifacts
#                  └─┴──< triggers ─< trigger_deliveries
#
# A job's owner is the API token that submitted it (``owner_id``, no foreign key:
# tokens are revoked, not deleted, and a job outlives its token's usefulness).
# Statuses are short strings rather than database enums: SQLite has none, and adding
# a status later is then a code change, not a migration.


class JobGroup(Base):
    """Jobs submitted, started and cancelled together."""

    __tablename__ = "job_groups"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(index=True)
    note: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Runner(Base):
    """A registered runner and what it can run; it talks to the server over HTTP only."""

    __tablename__ = "runners"
    __table_args__ = (sa.UniqueConstraint("token_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    #: The runner token it registered with; only that token may act as this runner.
    token_id: Mapped[int] = mapped_column()
    arch: Mapped[str] = mapped_column(sa.String(32))
    images: Mapped[list[str]] = mapped_column(sa.JSON)
    sandboxes: Mapped[list[str]] = mapped_column(sa.JSON)
    #: How its VMs run (kvm, tcg); "" without VMs.
    accelerator: Mapped[str] = mapped_column(sa.String(32), default="")
    #: Per installed disk image, its build (job, date) and the last new build's fate.
    image_builds: Mapped[dict[str, str] | None] = mapped_column(sa.JSON)
    slots: Mapped[int] = mapped_column()
    version: Mapped[str] = mapped_column(sa.String(64), default="")
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    """One run of a manifest."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(index=True)
    owner_name: Mapped[str] = mapped_column(sa.String(100))
    group_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("job_groups.id", ondelete="SET NULL"), index=True
    )
    #: pending, queued, running, success, failed, timeout, cancelled
    status: Mapped[str] = mapped_column(sa.String(16), index=True)
    #: The manifest exactly as submitted (YAML text).
    manifest: Mapped[str] = mapped_column(sa.Text)
    image: Mapped[str] = mapped_column(sa.String(128))
    arch: Mapped[str | None] = mapped_column(sa.String(32))
    #: The cache its manifest pushes to (``cache:``), None: none. A column so that a
    #: claim can pass over the jobs a runner may not push for in SQL.
    cache: Mapped[str | None] = mapped_column(sa.String(63))
    note: Mapped[str | None] = mapped_column(sa.Text)
    #: public, unlisted, private
    visibility: Mapped[str] = mapped_column(sa.String(16))
    #: Why the job ended as it did, in one sentence ("runner lost", "task 'x' failed").
    reason: Mapped[str | None] = mapped_column(sa.Text)
    #: The UUIDs of the secrets resolved at submit time.
    secret_ids: Mapped[list[str]] = mapped_column(sa.JSON)
    timeout_seconds: Mapped[float] = mapped_column()
    runner_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("runners.id", ondelete="SET NULL"), index=True
    )
    #: How many times a runner has claimed it (a lost job is re-queued at most once).
    attempts: Mapped[int] = mapped_column(default=0)
    #: The builder pool the job is reserved for (docs/builders.md, "Pool jobs"): only
    #: that pool's builders claim it. None: any runner that matches it.
    pool: Mapped[str | None] = mapped_column(sa.String(40))
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    #: Set while a running job is being cancelled (or timed out): the runner must stop.
    stop_requested: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    queued_at: Mapped[datetime | None] = mapped_column()
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    #: The catalogue image (and its arch) this job rebuilds: set only by the server, for a
    #: job of an image schedule an admin made (``builds.schedules``); runners install what
    #: such a job built (``builds.runners``). Never from a submitted manifest.
    rebuilds_image: Mapped[str | None] = mapped_column(sa.String(128), index=True)
    rebuilds_arch: Mapped[str | None] = mapped_column(sa.String(32))
    #: Until when its runner keeps the ended job's sandbox for ``nixfarm shell`` (a
    #: failed job, or ``shell: true``); None: not held. Cleared when the sandbox goes.
    held_until: Mapped[datetime | None] = mapped_column()


class JobTag(Base):
    __tablename__ = "job_tags"

    job_id: Mapped[int] = mapped_column(
        sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(sa.String(128), primary_key=True, index=True)


class Task(Base):
    """One named task of a job, in manifest order."""

    __tablename__ = "tasks"
    __table_args__ = (sa.UniqueConstraint("job_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column()
    name: Mapped[str] = mapped_column(sa.String(128))
    #: pending, running, success, failed, skipped
    status: Mapped[str] = mapped_column(sa.String(16))
    exit_code: Mapped[int | None] = mapped_column()
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()


class Artifact(Base):
    """A file a job kept; stored in the object store under ``storage_key``."""

    __tablename__ = "artifacts"
    __table_args__ = (sa.UniqueConstraint("job_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(sa.String(255))
    #: The path the manifest named, inside the sandbox.
    path: Mapped[str] = mapped_column(sa.Text)
    size: Mapped[int] = mapped_column(sa.BigInteger)
    storage_key: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: SHA-256 of the bytes as uploaded (hex); None for artifacts older than it.
    sha256: Mapped[str | None] = mapped_column(sa.String(64))


class Trigger(Base):
    """Something to do when a job ends: an email or a webhook."""

    __tablename__ = "triggers"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    #: email, webhook
    action: Mapped[str] = mapped_column(sa.String(16))
    #: success, failure, always
    condition: Mapped[str] = mapped_column(sa.String(16))
    #: The trigger as the manifest wrote it (to, cc, in_reply_to or url).
    details: Mapped[dict[str, str]] = mapped_column(sa.JSON)
    #: pending, delivered, failed, skipped
    status: Mapped[str] = mapped_column(sa.String(16))


class TriggerDelivery(Base):
    """One attempt to deliver a trigger, kept whatever its outcome."""

    __tablename__ = "trigger_deliveries"

    id: Mapped[int] = mapped_column(primary_key=True)
    trigger_id: Mapped[int] = mapped_column(
        sa.ForeignKey("triggers.id", ondelete="CASCADE"), index=True
    )
    attempt: Mapped[int] = mapped_column()
    ok: Mapped[bool] = mapped_column()
    #: The HTTP status or SMTP answer, or the error.
    detail: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Secret(Base):
    """An SSH key, PGP key or file, encrypted with the server's key (NaCl SecretBox)."""

    __tablename__ = "secrets"
    __table_args__ = (sa.UniqueConstraint("owner_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    uuid: Mapped[str] = mapped_column(sa.String(36), unique=True)
    owner_id: Mapped[int] = mapped_column()
    name: Mapped[str] = mapped_column(sa.String(512))
    #: ssh_key, pgp_key, file
    kind: Mapped[str] = mapped_column(sa.String(16))
    #: Where a file secret goes in the sandbox, and its mode.
    path: Mapped[str | None] = mapped_column(sa.Text)
    mode: Mapped[int | None] = mapped_column()
    #: nonce + ciphertext, as ``nacl.secret.SecretBox.encrypt`` returns it.
    ciphertext: Mapped[bytes] = mapped_column(sa.LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FarmKey(Base):
    """What every server of the farm must hold the same key for: its fingerprint only.

    The keys themselves (the secrets key, the registry token key) never enter the
    database: a copied database must not decrypt secrets. The fingerprint lets a server
    that starts with a different key, or none, refuse instead of making its own."""

    __tablename__ = "farm_keys"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    #: SHA-256 of a domain string and the key, hex.
    fingerprint: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebSession(Base):
    """A browser signed in to the web UI: a hold on a token, until it expires or the
    person signs out (the row is then deleted). Like a token, only a hash of the
    cookie's secret is stored. A session of a revoked token is dead with it."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: SHA-256 hex of the cookie's secret.
    secret_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    #: The token whose scopes the session holds (tokens are revoked, never deleted).
    token_id: Mapped[int] = mapped_column(index=True)
    #: The CSRF token the session's forms carry.
    csrf: Mapped[str] = mapped_column(sa.String(64))
    #: How it was opened: ``token`` or ``oidc``; and who, for an OIDC sign-in.
    method: Mapped[str] = mapped_column(sa.String(16))
    subject: Mapped[str | None] = mapped_column(sa.String(320))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


# --- ephemeral builders (nixfarm/builders) -------------------------------------------
#
#   builders ─< builder_decisions      a builder's runner token: builders.token_id
#
# A builder row is created before its cloud instance, and kept after it is destroyed
# (state ``destroyed``): the decisions and the bill are history worth keeping.


class Builder(Base):
    """A machine of a builder pool: created by the autoscaler, enrolled, destroyed."""

    __tablename__ = "builders"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: ``<farm id>-<pool>-<id>``: the instance's label and hostname, its runner's name.
    name: Mapped[str] = mapped_column(sa.String(100))
    pool: Mapped[str] = mapped_column(sa.String(40), index=True)
    provider: Mapped[str] = mapped_column(sa.String(32))
    #: The provider's id of the instance; None until the provider answered the create.
    instance_id: Mapped[str | None] = mapped_column(sa.String(128), index=True)
    #: creating, booting, ready, draining, held, destroyed (see nixfarm/builders)
    state: Mapped[str] = mapped_column(sa.String(16), index=True)
    ip: Mapped[str | None] = mapped_column(sa.String(64))
    region: Mapped[str] = mapped_column(sa.String(64), default="")
    plan: Mapped[str] = mapped_column(sa.String(64), default="")
    hourly_price: Mapped[float] = mapped_column(default=0.0)
    #: SHA-256 hex of the one-time enrollment token; None once used (or never made).
    enroll_hash: Mapped[str | None] = mapped_column(sa.String(64), unique=True)
    enroll_expires_at: Mapped[datetime | None] = mapped_column()
    #: The runner token it enrolled for; revoked when the builder is destroyed.
    token_id: Mapped[int | None] = mapped_column(index=True)
    #: The job it claimed last, and when that job ended (set by the autoscaler).
    last_job_id: Mapped[int | None] = mapped_column()
    #: Why it drains, is held or was destroyed, in one sentence.
    reason: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    enrolled_at: Mapped[datetime | None] = mapped_column()
    #: When it last had nothing to do (enrolled, or its last job ended).
    idle_since: Mapped[datetime | None] = mapped_column()
    #: keep-on-failure: destroyed at this time.
    hold_until: Mapped[datetime | None] = mapped_column()
    destroyed_at: Mapped[datetime | None] = mapped_column()
    #: It was destroyed because it failed to come up: its create was refused, it never
    #: enrolled, its machine vanished while booting, or it fell silent before taking a
    #: job. Enough of these in a row make the pool back off (autoscaler).
    boot_failed: Mapped[bool] = mapped_column(default=False)


class BuilderDecision(Base):
    """One decision of the autoscaler or the reaper, or one made by hand: kept."""

    __tablename__ = "builder_decisions"

    id: Mapped[int] = mapped_column(primary_key=True)
    pool: Mapped[str] = mapped_column(sa.String(40), index=True)
    builder_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("builders.id", ondelete="SET NULL"), index=True)
    #: create, enroll, refuse, drain, hold, destroy, reap, keep (at a stop), fail
    action: Mapped[str] = mapped_column(sa.String(16))
    reason: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ShellSession(Base):
    """A terminal into a held job's sandbox, asked for by ``nixfarm shell``.

    The row is how a runner, polling through any server, learns that a session wants
    its sandbox (``waiting``); the bytes themselves go over the event bus between the
    server holding the user's WebSocket and the one holding the runner's."""

    __tablename__ = "shell_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: Random, in the runner's and the bus's names for the session.
    key: Mapped[str] = mapped_column(sa.String(64), unique=True)
    job_id: Mapped[int] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"),
                                        index=True)
    token_id: Mapped[int] = mapped_column()
    #: waiting (for its runner), open, closed
    state: Mapped[str] = mapped_column(sa.String(16))
    #: The command to run (JSON list), or None for an interactive login shell.
    command: Mapped[list[str] | None] = mapped_column(sa.JSON)
    rows: Mapped[int] = mapped_column(default=24)
    cols: Mapped[int] = mapped_column(default=80)
    #: ``nixfarm ssh``: the OpenSSH public key the runner authorises for the build
    #: user; the session is then a byte stream to the sandbox's sshd, not a terminal.
    public_key: Mapped[str | None] = mapped_column(sa.Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Schedule(Base):
    """A manifest the server submits as a job at each slot of a cron expression."""

    __tablename__ = "schedules"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: The token that created it: its jobs are submitted as that token.
    owner_id: Mapped[int] = mapped_column(index=True)
    owner_name: Mapped[str] = mapped_column(sa.String(100))
    #: Five fields (minute hour day month weekday), or six with seconds last.
    cron: Mapped[str] = mapped_column(sa.String(200))
    manifest: Mapped[str] = mapped_column(sa.Text)
    note: Mapped[str | None] = mapped_column(sa.Text)
    #: The last slot a server claimed (one conditional UPDATE: several servers agree).
    last_slot: Mapped[datetime] = mapped_column()
    last_job_id: Mapped[int | None] = mapped_column()
    #: Why the last slot made no job (the manifest no longer accepted, the token gone).
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: An image rebuild (``nixfarm image schedule``, admins only): the catalogue image and
    #: arch its jobs build; runners install their artifacts (docs/images.md).
    image: Mapped[str | None] = mapped_column(sa.String(128))
    image_arch: Mapped[str | None] = mapped_column(sa.String(32))


class BuilderLease(Base):
    """Which server runs the autoscaler now: one holder at a time, for a short while."""

    __tablename__ = "builder_leases"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    #: The holding server's random id (``Autoscaler.holder``).
    holder: Mapped[str] = mapped_column(sa.String(64))
    expires_at: Mapped[datetime] = mapped_column()
