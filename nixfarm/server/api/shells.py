"""Shells into held sandboxes (``builds.shells``): two WebSockets and a release.

``/api/v1/jobs/ID/shell`` (a user's, ``jobs:submit``, the job's owner or an admin).
The client's first message is JSON ``{"command": [...] | null, "rows", "cols"}``; then
binary messages are keystrokes and ``{"resize": [rows, cols]}`` a new window size.
The server sends the terminal's output as binary messages, then ``{"exit": STATUS}``
and closes; a refusal is ``{"error": MESSAGE, "kind": ...}`` then a close; a close
without either: the runner's end went (its sandbox shut down, say at the hold's end).

``/api/v1/runners/R/jobs/ID/shells/KEY`` (the runner holding the job): the other end,
the same messages the other way round.

An SSH session (``nixfarm ssh``) is the same relay carrying a byte stream: the first
message adds ``"public_key": "ssh-ed25519 AAAA..."``; the server's first answer is
``{"open": true, "host_key": "ssh-ed25519 AAAA..."}`` (the sandbox's sshd's key, made
by the runner for this sandbox), then binary messages are the SSH connection's bytes
both ways. A sandbox without sshd is refused as ``InvalidInput`` (the runner said
``unsupported``).

Flow control. The bus between the two ends is at-most-once: a subscriber that falls
``events.memory.QUEUE_SIZE`` messages behind loses what comes next (an exit status
included). So each end counts the terminal data it delivered to its WebSocket and
says so every ``ACK_EVERY`` messages (``{"ack": TOTAL}`` on the other topic: a total,
so a lost one is made good by the next); and each end has at most ``WINDOW`` data
messages published and not yet delivered. While it may publish no more it reads no
more from its WebSocket, so a client that stops reading stops the runner's relay,
which stops reading the pty, which stops the command: back-pressure end to end, and
nothing lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from starlette.responses import Response

from nixfarm.builds import shells as sh
from nixfarm.builds.services import BuildServices
from nixfarm.errors import InvalidInput, NixfarmError, Unavailable
from nixfarm.events.base import Subscription
from nixfarm.runner.shielding import first_done
from nixfarm.scopes import JOBS_SUBMIT, RUNNER
from nixfarm.server.auth import farm_of, require
from nixfarm.wire.base import Id

router = APIRouter(prefix="/v1", tags=["shells"])
log = logging.getLogger("nixfarm.server.shells")
#: Data messages published and not yet delivered by the other end: far below a
#: subscription's queue (1024), which also holds the other kinds of message.
WINDOW = 256
#: The receiving end acknowledges every this many data messages.
ACK_EVERY = 32


class _Flow:
    """One direction's data messages: published here, delivered by the other end."""

    def __init__(self) -> None:
        self.sent = 0
        self.acked = 0
        self._moved = asyncio.Event()

    def ack(self, total: object) -> None:
        if isinstance(total, int) and total > self.acked:
            self.acked = total
            self._moved.set()

    async def room(self) -> None:
        """Return once one more message may be published."""
        while self.sent - self.acked >= WINDOW:
            self._moved.clear()
            await self._moved.wait()


def builds(conn: WebSocket | Request) -> BuildServices:
    return farm_of(conn).builds


async def _refuse(ws: WebSocket, error: NixfarmError) -> None:
    with contextlib.suppress(Exception):
        await ws.send_json({"error": error.message, "kind": type(error).__name__})
        await ws.close(code=4000)


async def _to_socket(ws: WebSocket, sub: Subscription, stop_on_exit: bool, flow: _Flow,
                     acks: str, services: BuildServices) -> None:
    """Bus messages to the WebSocket until an ``exit`` (or ``close``) passes; what was
    delivered acknowledged on ``acks``, the other end's acknowledgements to ``flow``."""
    delivered = 0
    async for message in sub:
        payload, fields = sh.parse(message)
        if payload is not None:
            await ws.send_bytes(payload)
            delivered += 1
            if delivered % ACK_EVERY == 0:
                await services.jobs.bus.publish(acks, sh.control(ack=delivered))
        elif "ack" in fields:
            flow.ack(fields["ack"])
        elif "exit" in fields and stop_on_exit:
            await ws.send_json({"exit": fields["exit"]})
            return
        elif "gone" in fields and stop_on_exit:
            return  # the client is told by the close without an exit status
        elif "close" in fields and not stop_on_exit:
            return
        elif "resize" in fields and not stop_on_exit:
            await ws.send_json({"resize": fields["resize"]})


async def _from_socket(ws: WebSocket, publish: str, services: BuildServices,
                       user: bool, flow: _Flow) -> None:
    """WebSocket messages to the bus until the socket closes (or the runner's exit),
    data within ``flow``'s window."""
    bus = services.jobs.bus
    while True:
        await flow.room()
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("bytes") is not None:
            await bus.publish(publish, sh.data(message["bytes"]))
            flow.sent += 1
            continue
        try:
            fields = json.loads(message.get("text") or "{}")
        except ValueError:
            continue
        if user and isinstance(fields, dict) and "resize" in fields:
            rows, cols = sh.check_size(*fields["resize"][:2])
            await bus.publish(publish, sh.control(resize=[rows, cols]))
        elif not user and isinstance(fields, dict) and "exit" in fields:
            await bus.publish(publish, sh.control(exit=fields["exit"]))
            return


async def _relay(ws: WebSocket, sub: Subscription, publish: str, services: BuildServices,
                 user: bool) -> None:
    flow = _Flow()
    await first_done(_to_socket(ws, sub, user, flow, publish, services),
                     _from_socket(ws, publish, services, user, flow))


@router.websocket("/jobs/{job_id}/shell")
async def user_shell(ws: WebSocket, job_id: int) -> None:
    services = builds(ws)
    await ws.accept()
    key = services.shells.new_key()
    try:
        who = await require(ws, JOBS_SUBMIT)
        first = await ws.receive_json()
        if not isinstance(first, dict):
            first = {}
        command = first.get("command")
        public_key = first.get("public_key")
        async with services.jobs.bus.subscribe(sh.output_topic(key)) as sub:
            await services.shells.open(
                who, job_id, key, [str(a) for a in command] if isinstance(command, list)
                else None, first.get("rows", 24), first.get("cols", 80),
                None if public_key is None else str(public_key))
            try:
                opened = None
                async with asyncio.timeout(sh.CONNECT_SECONDS):
                    while opened is None:
                        message = await sub.get(sh.CONNECT_SECONDS)
                        if message is not None and "open" in sh.parse(message)[1]:
                            opened = sh.parse(message)[1]
                if opened.get("error") and opened.get("unsupported"):
                    raise InvalidInput(str(opened["error"]), field="job")
                if opened.get("error"):
                    raise Unavailable(f"the runner could not open a shell: {opened['error']}",
                                      url="")
                if public_key is not None:
                    await ws.send_json({"open": True, "host_key": opened.get("host_key")})
            except TimeoutError:
                raise Unavailable(f"job {job_id}'s runner did not answer within "
                                  f"{sh.CONNECT_SECONDS:g} s", url="") from None
            await _relay(ws, sub, sh.input_topic(key), services, user=True)
    except NixfarmError as e:
        await _refuse(ws, e)
        return
    except WebSocketDisconnect:
        pass
    finally:
        await services.jobs.bus.publish(sh.input_topic(key), sh.control(close=True))
        with contextlib.suppress(Exception):
            await services.shells.close(key)
    with contextlib.suppress(Exception):
        await ws.close()


@router.websocket("/runners/{runner_id}/jobs/{job_id}/shells/{key}")
async def runner_shell(ws: WebSocket, runner_id: int, job_id: int, key: str) -> None:
    services = builds(ws)
    await ws.accept()
    try:
        who = await require(ws, RUNNER)
        await services.runners._held(who, runner_id, job_id)
        await services.shells.connect(job_id, key)
        async with services.jobs.bus.subscribe(sh.input_topic(key)) as sub:
            first = await ws.receive_json()  # the runner's terminal started, or not
            if not isinstance(first, dict):
                first = {}
            error = first.get("error")
            await services.jobs.bus.publish(sh.output_topic(key), sh.control(
                open=True, error=error, unsupported=bool(first.get("unsupported")),
                host_key=first.get("host_key")))
            if not error:
                try:
                    await _relay(ws, sub, sh.output_topic(key), services, user=False)
                finally:
                    # The runner's end is gone (its exit, if it had one, went first: the
                    # sandbox may have gone with the hold): the user's stops waiting.
                    with contextlib.suppress(Exception):
                        await services.jobs.bus.publish(sh.output_topic(key),
                                                        sh.control(gone=True))
    except NixfarmError as e:
        await _refuse(ws, e)
        return
    except WebSocketDisconnect:
        pass
    with contextlib.suppress(Exception):
        await ws.close()


@router.post("/runners/{runner_id}/jobs/{job_id}/release", status_code=204)
async def release(request: Request, runner_id: Id, job_id: Id) -> Response:
    """The runner shut the held sandbox of an ended job down."""
    who = await require(request, RUNNER)
    await builds(request).runners.release(who, runner_id, job_id)
    return Response(status_code=204)
