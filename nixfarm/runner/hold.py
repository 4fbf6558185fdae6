"""Keeping an ended job's sandbox for ``nixfarm shell`` (see ``builds.shells``).

After a failed job (or any ``shell: true`` job) the runner does not shut the sandbox
down: it goes on heartbeating the job, and each answer names the shell sessions
waiting for it. For each, the runner opens a WebSocket to the server (it needs no
inbound port), starts a terminal in the sandbox (``Sandbox.shell``) and relays:
binary messages are terminal bytes, JSON ones a window size (``resize``), the
terminal's end (``exit``), or, first, whether it started (``started`` / ``error``).
An SSH session (``nixfarm ssh``, a request with a public key) is the same relay with
the bytes of a connection to the sandbox's sshd (``Sandbox.ssh``); ``started`` then
carries sshd's host key, and a sandbox without sshd answers ``unsupported``.

The hold ends when the server says its time is up (``release``), when the last
session closes after at least one started (not after an SSH session: ssh tools
connect again and again), or when the runner stops; then the
sandbox is shut down and the server told (``release``). A kept sandbox takes no slot:
the runner goes on claiming jobs, and keeps at most as many sandboxes as it has slots
(a job ending past that is not kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from nixfarm.errors import NixfarmError
from nixfarm.retries import retried, runner_calls
from nixfarm.runner.protocol import LeaseLost, RunnerClient
from nixfarm.runner.sandbox.base import NoSsh, Sandbox
from nixfarm.runner.sandbox.terminal import Terminal
from nixfarm.runner.shielding import first_done, uncancelled
from nixfarm.wire.runners import ShellRequest

log = logging.getLogger("nixfarm.runner.hold")


async def hold(client: RunnerClient, job_id: int, sandbox: Sandbox, wait: float,
               stopping: Awaitable[object]) -> None:
    """Serve shells into ``sandbox`` until the hold ends; then shut it down."""
    sessions: dict[str, asyncio.Task[None]] = {}
    # Sessions that started (a refused one, say for want of sshd, is not one: its user
    # is pointed to `nixfarm shell`, which must find the sandbox). SSH tooling (scp,
    # rsync, a few ssh commands in a row) opens one connection after another: after an
    # SSH session the sandbox stays for the hold's whole time.
    started: set[str] = set()
    ssh_started: set[str] = set()
    stop = asyncio.ensure_future(stopping)
    try:
        while not stop.done():
            # A failed heartbeat is tried again as the job's own are (runner_calls).
            beat = asyncio.ensure_future(retried(
                runner_calls(f"job {job_id}: heartbeat of its held sandbox", log),
                client.heartbeat, job_id, wait))
            live = [t for t in sessions.values() if not t.done()]
            await asyncio.wait([beat, stop, *live], return_when=asyncio.FIRST_COMPLETED)
            if not beat.done():
                beat.cancel()
                with contextlib.suppress(asyncio.CancelledError, NixfarmError):
                    await beat
                if started and not ssh_started and all(t.done() for t in sessions.values()):
                    break  # the last session closed
                continue
            try:
                answer = beat.result()
            except LeaseLost:
                break
            if answer.release:
                break
            for request in answer.shells:
                if request.key not in sessions:
                    sessions[request.key] = asyncio.create_task(
                        _session(client, job_id, sandbox, request, started, ssh_started))
    finally:
        stop.cancel()
        for task in sessions.values():
            task.cancel()
        for task in sessions.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await uncancelled(sandbox.shutdown())
        with contextlib.suppress(NixfarmError):
            await uncancelled(client.release(job_id))
        log.info("job %d: held sandbox shut down", job_id)


async def _session(client: RunnerClient, job_id: int, sandbox: Sandbox,
                   request: ShellRequest, started: set[str], ssh_started: set[str]) -> None:
    url = client.shell_url(job_id, request.key)
    try:
        async with connect(url, additional_headers={"Authorization": f"Bearer {client.token}"},
                           open_timeout=30, max_size=2**20) as ws:
            host_key = None
            try:
                if request.public_key is not None:
                    terminal, host_key = await sandbox.ssh(request.public_key)
                else:
                    terminal = await sandbox.shell(request.command, request.rows,
                                                   request.cols)
            except NoSsh as e:
                await ws.send(json.dumps({
                    "error": f"job {job_id} cannot take SSH: {e.message}; `nixfarm shell "
                             f"{job_id}` opens a terminal in it", "unsupported": True}))
                return
            except NixfarmError as e:
                await ws.send(json.dumps({"error": e.message}))
                return
            started.add(request.key)
            if host_key is not None:
                ssh_started.add(request.key)
            await ws.send(json.dumps({"started": True, "host_key": host_key}))
            try:
                await _relay(ws, terminal)
            finally:
                await uncancelled(terminal.close())
    except (OSError, WebSocketException) as e:
        log.warning("job %d: shell session lost: %s", job_id, e)


async def _relay(ws: ClientConnection, terminal: Terminal) -> None:
    async def output() -> None:
        while data := await terminal.read():
            await ws.send(data)
        await ws.send(json.dumps({"exit": await terminal.wait()}))

    async def keys() -> None:
        async for message in ws:
            if isinstance(message, bytes):
                await terminal.write(message)
                continue
            with contextlib.suppress(ValueError, TypeError, IndexError):
                fields = json.loads(message)
                if isinstance(fields, dict) and "resize" in fields:
                    rows, cols = fields["resize"][:2]
                    terminal.resize(int(rows), int(cols))

    await first_done(output(), keys())
