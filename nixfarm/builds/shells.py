"""Shells into held sandboxes: ``nixfarm shell JOB``, carried over the server.

A failed job (and any ``shell: true`` job) keeps its sandbox on its runner for
``jobs.shell_hold_minutes`` after its end (``Job.held_until``). Its owner (or an
admin: whoever may see and cancel the job) opens a session::

    nixfarm shell ──WebSocket──► server A ──bus shell.KEY.in──►  server B ──WebSocket──► runner
                  ◄────────────          ◄──bus shell.KEY.out──           ◄──────────  pty in the
                                                                                      sandbox

1. The user's WebSocket (``/api/v1/jobs/ID/shell``) asks for a session: a row in
   ``shell_sessions`` (state ``waiting``) and a wake-up on the job's control topic.
2. The runner, heartbeating on the held job through any server, is told of the
   waiting session and opens a WebSocket of its own to
   ``/api/v1/runners/R/jobs/ID/shells/KEY``: the runner needs no inbound port.
3. The two servers (one, in an embedded farm) relay bytes over the event bus, each
   message tagged: ``d`` + bytes (terminal data), ``c`` + JSON (``open``, ``resize``,
   ``exit``, ``close``, ``ack``: the flow control of ``server/api/shells.py``).

The runner shuts the sandbox down, and releases the hold, when the hold's time is up
or when the last session closes after at least one was opened.
"""

from __future__ import annotations

import json
import logging
import re
import secrets

import sqlalchemy as sa

from nixfarm.builds.jobs import JobService, control_topic, may_change
from nixfarm.db import jobs as q
from nixfarm.db.models import ShellSession, utcnow
from nixfarm.errors import Conflict, Forbidden, InvalidInput
from nixfarm.scopes import ADMIN
from nixfarm.tokens import Principal
from nixfarm.wire.runners import ShellRequest

log = logging.getLogger("nixfarm.builds.shells")

#: Seconds a user's session waits for the runner to connect.
CONNECT_SECONDS = 60.0


def input_topic(key: str) -> str:
    return f"shell.{key}.in"


def output_topic(key: str) -> str:
    return f"shell.{key}.out"


def data(payload: bytes) -> bytes:
    return b"d" + payload


def control(**fields: object) -> bytes:
    return b"c" + json.dumps(fields).encode()


def parse(message: bytes) -> tuple[bytes | None, dict[str, object]]:
    """A bus message: (data, {}) or (None, control fields)."""
    if message[:1] == b"d":
        return message[1:], {}
    try:
        fields = json.loads(message[1:])
    except ValueError:
        return None, {}
    return None, fields if isinstance(fields, dict) else {}


#: The key types an SSH session may present (what OpenSSH 8+ accepts by default).
KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
             "ecdsa-sha2-nistp521", "ssh-rsa", "sk-ssh-ed25519@openssh.com",
             "sk-ecdsa-sha2-nistp256@openssh.com")
_KEY = re.compile(r"[A-Za-z0-9@.-]+ [A-Za-z0-9+/]+={0,3}( [ -~]{0,200})?")


def check_public_key(key: object) -> str:
    """An OpenSSH public key line (``TYPE BASE64 [COMMENT]``), as the runner writes it
    into ``authorized_keys``: one line, no options (``command=`` and the like)."""
    if not (isinstance(key, str) and len(key) <= 16384 and _KEY.fullmatch(key.strip())
            and key.split()[0] in KEY_TYPES):
        raise InvalidInput("an SSH session's key is one OpenSSH public key line "
                           f"({KEY_TYPES[0]} AAAA... [comment]), as in a .pub file",
                           field="public_key")
    return key.strip()


def check_size(rows: object, cols: object) -> tuple[int, int]:
    if not (isinstance(rows, int) and isinstance(cols, int)
            and 1 <= rows <= 1000 and 1 <= cols <= 1000):
        raise InvalidInput("a terminal's size is 1-1000 rows and columns", field="size")
    return rows, cols


class ShellService:
    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs
        self.db = jobs.db
        self.bus = jobs.bus

    def new_key(self) -> str:
        return secrets.token_urlsafe(24)

    async def open(self, who: Principal, job_id: int, key: str, command: list[str] | None,
                   rows: int, cols: int, public_key: str | None = None) -> None:
        """Ask the job's runner for a session ``key`` (subscribe to its output first).
        With ``public_key``: an SSH session (``nixfarm ssh``), the same rules."""
        job = await self.jobs._readable(who, job_id)  # NotFound for whoever may not see it
        if not may_change(who, job):
            raise Forbidden(f"job {job_id} is not yours: only its owner (or an admin) may "
                            "open a shell into it", scope=ADMIN)
        if job.held_until is None or job.held_until <= utcnow():
            state = ("still running: a shell opens once it has ended (failed, or with "
                     "shell: true)" if job.status in ("queued", "running", "pending") else
                     f"{job.status} and its sandbox is not held (only failed jobs and "
                     "shell: true jobs keep it, for jobs.shell_hold_minutes)")
            raise Conflict(f"job {job_id} is {state}")
        if command is not None and (not command or any("\0" in a for a in command)):
            raise InvalidInput("a shell's command is a non-empty list of arguments",
                               field="command")
        rows, cols = check_size(rows, cols)
        if public_key is not None:
            public_key, command = check_public_key(public_key), None
        async with self.db.session() as s:
            s.add(ShellSession(key=key, job_id=job_id, token_id=who.token_id,
                               state="waiting", command=command, rows=rows, cols=cols,
                               public_key=public_key))
        await self.bus.publish(control_topic(job_id), b"shell")
        log.info("%s session into job %d opened by %s",
                 "ssh" if public_key else "shell", job_id, who.name)

    async def waiting(self, job_id: int) -> list[ShellRequest]:
        async with self.db.session() as s:
            rows = await s.scalars(sa.select(ShellSession).where(
                ShellSession.job_id == job_id, ShellSession.state == "waiting"))
            return [ShellRequest(key=r.key, command=r.command, rows=r.rows, cols=r.cols,
                                 public_key=r.public_key) for r in rows]

    async def connect(self, job_id: int, key: str) -> None:
        """The runner connects to a waiting session of the job it holds."""
        async with self.db.session() as s:
            result = await s.execute(
                sa.update(ShellSession)
                .where(ShellSession.key == key, ShellSession.job_id == job_id,
                       ShellSession.state == "waiting")
                .values(state="open").execution_options(synchronize_session=False))
            if result.rowcount != 1:  # type: ignore[attr-defined]
                raise Conflict(f"there is no shell session waiting for job {job_id} by "
                               "that key")

    async def close(self, key: str) -> None:
        async with self.db.session() as s:
            await s.execute(sa.update(ShellSession).where(ShellSession.key == key)
                            .values(state="closed")
                            .execution_options(synchronize_session=False))

    async def release(self, job_id: int) -> None:
        """The runner shut the held sandbox down: the hold and its sessions end."""
        async with self.db.session() as s:
            job = await q.get_job(s, job_id)
            job.held_until = None
            await s.execute(sa.update(ShellSession).where(ShellSession.job_id == job_id)
                            .values(state="closed")
                            .execution_options(synchronize_session=False))
