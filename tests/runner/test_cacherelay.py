"""The relay of the farm's caches into a nix-daemon's network namespace: what it lets
through and what it refuses, in a real network namespace (``unshare --net``) with a
real HTTP server standing in for the farm on this host's loopback."""

from __future__ import annotations

import asyncio
import http.server
import os
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator

import pytest

from nixfarm.runner.cacherelay import RELAY_PORT, CacheRelay, relayed

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Farm(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self) -> None:
        _Farm.seen.append(f"GET {self.path} {self.headers.get('Authorization', '-')}")
        body = f"served {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/x-nix-narinfo")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "123")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def farm() -> Iterator[str]:
    _Farm.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Farm)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
async def namespace(farm: str) -> AsyncIterator[int]:
    """A process in a network namespace of its own, with the relay of cache ``c1``."""
    holder = await asyncio.create_subprocess_exec("unshare", "--net", "--", "sleep", "120")
    relay = CacheRelay(farm, ["c1"])
    try:
        for _ in range(100):  # until unshare has made the namespace
            if os.readlink(f"/proc/{holder.pid}/ns/net") != os.readlink("/proc/self/ns/net"):
                break
            await asyncio.sleep(0.02)
        await relay.listen_in(holder.pid)
        yield holder.pid
    finally:
        await relay.close()
        holder.kill()
        await holder.wait()


def _ask(pid: int, request: bytes) -> str:
    """Send ``request`` to the relay from inside the namespace; its whole answer."""
    done = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "busybox", "nc", "-w",
                           "5", "127.0.0.1", str(RELAY_PORT)],
                          input=request, capture_output=True, timeout=30)
    return done.stdout.decode(errors="replace")


async def test_the_relay_passes_reads_of_its_caches_and_nothing_else(
        namespace: int) -> None:
    async def ask(request: bytes) -> str:
        return await asyncio.to_thread(_ask, namespace, request)

    ok = await ask(b"GET /cache/c1/abc.narinfo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   b"Authorization: Basic dXNlcjpwdw==\r\n\r\n")
    assert ok.startswith("HTTP/1.1 200 OK\r\n"), ok
    assert "served /cache/c1/abc.narinfo" in ok and "Connection: close" in ok
    head = await ask(b"HEAD /cache/c1/nar/x.nar.xz HTTP/1.1\r\nHost: h\r\n\r\n")
    assert head.startswith("HTTP/1.1 200 OK") and "content-length: 123" in head.lower()
    for refused in (b"POST /cache/c1/abc.narinfo HTTP/1.1\r\nHost: h\r\n\r\n",
                    b"PUT /cache/c1/abc.narinfo HTTP/1.1\r\nHost: h\r\n\r\n",
                    b"GET /cache/c2/abc.narinfo HTTP/1.1\r\nHost: h\r\n\r\n",
                    b"GET /cache/c1/../c2/abc.narinfo HTTP/1.1\r\nHost: h\r\n\r\n",
                    b"GET /api/v1/caches HTTP/1.1\r\nHost: h\r\n\r\n",
                    b"GET http://evil/cache/c1/x HTTP/1.1\r\nHost: h\r\n\r\n"):
        answer = await ask(refused)
        assert answer.startswith("HTTP/1.1 403 Forbidden"), (refused, answer)
    assert (await ask(b"nonsense\r\n\r\n")).startswith("HTTP/1.1 400")
    # The farm saw the one GET, with the daemon's own credentials, and nothing else.
    assert _Farm.seen == ["GET /cache/c1/abc.narinfo Basic dXNlcjpwdw=="]


def test_substituters_split_into_the_farms_and_the_others() -> None:
    every, farms, names = relayed(
        "http://farm:8080/cache/main https://cache.nixos.org http://farm:8080/cache/b/ "
        "http://farm:8080/cachex/y http://farm:8080/cache/a/b",
        ["http://other", "http://farm:8080/"])
    relay = f"http://127.0.0.1:{RELAY_PORT}"
    assert names == {"main", "b"}
    assert farms == f"{relay}/cache/main {relay}/cache/b"
    assert every == (f"{relay}/cache/main https://cache.nixos.org {relay}/cache/b "
                     "http://farm:8080/cachex/y http://farm:8080/cache/a/b")
