"""The client end of ``nixfarm shell``: a WebSocket to ``/api/v1/jobs/ID/shell``
(``server.api.shells`` describes the messages)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from nixfarm.client.api import Endpoint
from nixfarm.client.connection import error_named, websocket_url
from nixfarm.errors import Unavailable


class Shell:
    """One session: ``output()`` yields terminal bytes; ``status`` is set at the end."""

    def __init__(self, ws: ClientConnection, url: str) -> None:
        self.ws = ws
        self.url = url
        self.status: int | None = None

    async def send(self, data: bytes) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(data)

    async def resize(self, rows: int, cols: int) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(json.dumps({"resize": [rows, cols]}))

    async def output(self) -> AsyncIterator[bytes]:
        try:
            async for message in self.ws:
                if isinstance(message, bytes):
                    yield message
                    continue
                fields = json.loads(message)
                if "error" in fields:
                    raise error_named(str(fields.get("kind")), str(fields["error"]), self.url)
                if "exit" in fields:
                    self.status = int(fields["exit"])
                    return
        except ConnectionClosed:
            pass
        if self.status is None:
            raise Unavailable("the shell session ended without its command's exit status",
                              url=self.url)


@contextlib.asynccontextmanager
async def open_shell(endpoint: Endpoint, job_id: int, command: list[str] | None,
                     rows: int, cols: int) -> AsyncIterator[Shell]:
    url = f"{websocket_url(endpoint.url)}/api/v1/jobs/{job_id}/shell"
    headers = {"Authorization": f"Bearer {endpoint.token}"} if endpoint.token else {}
    try:
        async with connect(url, additional_headers=headers, open_timeout=30,
                           max_size=2**20) as ws:
            await ws.send(json.dumps({"command": command, "rows": rows, "cols": cols}))
            yield Shell(ws, endpoint.url)
    except (OSError, WebSocketException) as e:
        raise Unavailable(f"cannot open a shell at {endpoint.url}: {e}",
                          url=endpoint.url) from None


async def pump(fd: int, shell: Shell) -> None:
    """Bytes read from ``fd`` (the user's terminal) to the shell, until its end."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    def readable() -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
        queue.put_nowait(data)

    loop.add_reader(fd, readable)
    try:
        while data := await queue.get():
            await shell.send(data)
    finally:
        loop.remove_reader(fd)


@contextlib.asynccontextmanager
async def open_ssh(endpoint: Endpoint, job_id: int, public_key: str
                   ) -> AsyncIterator[tuple[Shell, str]]:
    """An SSH session's byte stream into ``job_id``'s held sandbox, letting
    ``public_key`` in, and the sandbox's sshd's host key (``TYPE BASE64``)."""
    url = f"{websocket_url(endpoint.url)}/api/v1/jobs/{job_id}/shell"
    headers = {"Authorization": f"Bearer {endpoint.token}"} if endpoint.token else {}
    try:
        async with connect(url, additional_headers=headers, open_timeout=30,
                           max_size=2**20) as ws:
            await ws.send(json.dumps({"command": None, "rows": 24, "cols": 80,
                                      "public_key": public_key}))
            try:
                first = await ws.recv()
            except ConnectionClosed:
                first = "{}"
            fields = json.loads(first) if isinstance(first, str) else {}
            if not isinstance(fields, dict):
                fields = {}
            if "error" in fields:
                raise error_named(str(fields.get("kind")), str(fields["error"]), endpoint.url)
            host_key = fields.get("host_key")
            if not isinstance(host_key, str) or len(host_key.split()) != 2:
                raise Unavailable("the server did not say the sandbox's SSH host key",
                                  url=endpoint.url)
            yield Shell(ws, endpoint.url), host_key
    except (OSError, WebSocketException) as e:
        raise Unavailable(f"cannot open an SSH session at {endpoint.url}: {e}",
                          url=endpoint.url) from None
