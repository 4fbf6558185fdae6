"""`nixfarm push` against a server that dies in the middle of an upload: it must not
hang. A real HTTP server (asyncio, on a socket) answers which paths are missing, then
reads 2 MB of the PUT and stops responding (or closes the connection); push gives the
stalled transfer up after --timeout, tries twice more, and exits 1 naming the path."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fixtures.farm import NIXFARM

CUT = 2 << 20


@dataclass
class DyingServer:
    """Answers ``missing`` with every path asked about; cuts every PUT at 2 MB."""

    mode: str  # "stall": stop reading and answering; "close": hang up
    port: int = 0
    puts: list[int] = field(default_factory=list)  # bytes read of each PUT

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._answer(reader, writer)
        finally:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        method = head.split(" ", 1)[0]
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in head.split("\r\n")[1:] if line)}
        if method == "POST":
            body = json.loads(await reader.readexactly(int(headers["content-length"])))
            answer = json.dumps({"missing": body["paths"]}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer))
            await writer.drain()
            return
        read = 0
        self.puts.append(0)
        while read < CUT:
            chunk = await reader.read(min(65536, CUT - read))
            if not chunk:
                break
            read += len(chunk)
            self.puts[-1] = read
        if self.mode == "close":
            writer.transport.abort()
            return
        await asyncio.sleep(3600)  # alive, silent, reading nothing more

    def serve(self) -> Iterator[DyingServer]:
        loop = asyncio.new_event_loop()
        server = loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            async def stop() -> None:
                server.close()
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await server.wait_closed()

            asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()


@pytest.fixture
def big_path(tmp_path: Path) -> str:
    """A store path of 4 MB that does not compress (so 2 MB is half of its NAR)."""
    data = tmp_path / "opsa-push-stall.bin"
    data.write_bytes(os.urandom(4 << 20))
    done = subprocess.run(["nix-store", "--add", str(data)], capture_output=True, text=True,
                          check=True)
    return done.stdout.strip()


@pytest.mark.parametrize("mode", ["stall", "close"])
def test_push_to_a_server_dying_mid_upload_fails_naming_the_path(
        big_path: str, mode: str) -> None:
    for server in DyingServer(mode).serve():
        started = time.monotonic()
        done = subprocess.run(
            [NIXFARM, "push", "--url", f"http://127.0.0.1:{server.port}", "--token", "t",
             "--cache", "c", "--compression", "none", "--timeout", "2", big_path],
            capture_output=True, text=True, timeout=120)
        took = time.monotonic() - started
        assert done.returncode == 1, done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("error: uploading ") and big_path in last, done.stderr
        # Three tries, each given up after 2 s without progress, with pauses between.
        assert len(server.puts) == 3 and all(n >= CUT // 2 for n in server.puts), server.puts
        assert took < 3 * 2 + 10 + 10, took
        assert done.stdout == ""
