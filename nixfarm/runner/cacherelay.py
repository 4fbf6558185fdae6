"""The farm's caches for the runner's nix-daemons, whatever network they have.

Each of the runner's nix-daemons lives in a network namespace of its own (``nixd``):
the one for jobs without network has only a loopback, the one for jobs with network
reaches out through slirp4netns but not the runner's loopback, where the farm may
listen. Either way, the farm's own caches named in the runner's ``substituters``
would be out of reach, and a job without network would build everything again.

So the runner relays them. In each daemon's namespace it holds a listening socket on
``127.0.0.1:RELAY_PORT`` (made by a thread that joins the namespace for a moment:
nothing else listens in a namespace of ours), and the daemon's substituters name the
relay instead of the farm. The relay answers only ``GET``/``HEAD`` of the caches it
was given (``/cache/NAME/...``) and fetches them from the farm over the runner's own
network; anything else gets 403, and no request body is read. It adds no credentials:
an ``Authorization`` header the daemon sends (from its netrc) is passed on, and a
build, which has no netrc, reads only what the farm gives anyone (public caches).

What a build in such a namespace (a fixed-output derivation) can reach through it:
the same public caches, read-only; a request it makes reaches the farm's access log
and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import socket
import struct
import threading
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

import httpx

log = logging.getLogger("nixfarm.runner.cacherelay")

#: The relay's port in each daemon's own network namespace.
RELAY_PORT = 5380
RELAY_URL = f"http://127.0.0.1:{RELAY_PORT}"
_CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_HEAD_LIMIT = 16 * 1024
_HEAD_SECONDS = 30.0
#: Headers of the farm's answer passed on to the daemon.
_PASSED = ("content-type", "content-length", "last-modified", "etag")


def farm_cache(url: str, farm_urls: Iterable[str]) -> str | None:
    """The cache name if the substituter ``url`` is a cache of the farm at one of
    ``farm_urls`` (``<farm>/cache/NAME``), else None."""
    for farm in farm_urls:
        prefix = farm.rstrip("/") + "/cache/"
        if url.startswith(prefix):
            name = url[len(prefix):].strip("/")
            if name and "/" not in name:
                return name
    return None


def relayed(substituters: str, farm_urls: Sequence[str]) -> tuple[str, str, set[str]]:
    """Split a ``substituters`` value: (all of them with the farm's caches through the
    relay, only the farm's through the relay, the farm's cache names)."""
    every, farms, names = [], [], set()
    for url in substituters.split():
        name = farm_cache(url, farm_urls)
        if name is None:
            every.append(url)
        else:
            names.add(name)
            every.append(f"{RELAY_URL}/cache/{name}")
            farms.append(f"{RELAY_URL}/cache/{name}")
    return " ".join(every), " ".join(farms), names


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns: {os.strerror(error)}")


def _loopback_up(sock: socket.socket) -> None:
    request = struct.pack("16sH14x", b"lo", 0)
    flags = struct.unpack("16sH14x", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
    if not flags & _IFF_UP:
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


def _listen_in(pid: int) -> socket.socket:
    """A socket listening on 127.0.0.1:RELAY_PORT in the network namespace of ``pid``
    (its loopback brought up). Runs in a thread of its own, which joins that namespace
    and leaves it again (the thread ends either way)."""
    made: list[socket.socket] = []
    failed: list[BaseException] = []

    def inside() -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(target)
            finally:
                os.close(target)
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    _loopback_up(sock)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.bind(("127.0.0.1", RELAY_PORT))
                    sock.listen(64)
                    sock.setblocking(False)
                except BaseException:
                    sock.close()
                    raise
                made.append(sock)
            finally:
                _setns(own)
        except BaseException as e:  # reported to the caller
            failed.append(e)
        finally:
            os.close(own)

    thread = threading.Thread(target=inside, name=f"relay-netns-{pid}")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]


class CacheRelay:
    """The relay of the farm's caches ``caches`` at ``farm_url`` (see the module)."""

    def __init__(self, farm_url: str, caches: Iterable[str]) -> None:
        self.farm_url = farm_url.rstrip("/")
        self.caches = frozenset(caches)
        self._servers: list[asyncio.Server] = []
        self._http: httpx.AsyncClient | None = None

    async def listen_in(self, pid: int) -> None:
        """Serve in the network namespace of process ``pid`` (a daemon of ours)."""
        sock = await asyncio.to_thread(_listen_in, pid)
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0))
        self._servers.append(await asyncio.start_server(self._serve, sock=sock))
        log.info("relaying the farm's caches %s into the namespace of pid %d",
                 ", ".join(sorted(self.caches)), pid)

    async def close(self) -> None:
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def _allowed(self, method: str, target: str) -> bool:
        if method not in ("GET", "HEAD") or not target.startswith("/cache/"):
            return False
        parts = target.split("?", 1)[0].split("/")
        return (len(parts) >= 4 and parts[2] in self.caches
                and not any(p in (".", "..") for p in parts))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _HEAD_SECONDS)
            if len(head) > _HEAD_LIMIT:
                raise ValueError("header too long")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, colon, value = line.partition(":")
                if colon:
                    headers[name.strip().lower()] = value.strip()
            if not self._allowed(method, target) or urlsplit(target).netloc:
                await _answer(writer, 403, b"only GET and HEAD of the farm's caches\n")
                return
            await self._forward(method, target, headers.get("authorization"), writer)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ValueError):
            with contextlib.suppress(OSError):
                await _answer(writer, 400, b"bad request\n")
        except httpx.HTTPError as e:
            log.warning("cache relay: %s %s", type(e).__name__, e)
            with contextlib.suppress(OSError):
                await _answer(writer, 502, b"the farm did not answer\n")
        except OSError:
            pass  # the daemon went away
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _forward(self, method: str, target: str, authorization: str | None,
                       writer: asyncio.StreamWriter) -> None:
        assert self._http is not None
        headers = {"Accept-Encoding": "identity"}
        if authorization:
            headers["Authorization"] = authorization
        async with self._http.stream(method, self.farm_url + target,
                                     headers=headers) as answer:
            lines = [f"HTTP/1.1 {answer.status_code} {answer.reason_phrase}"]
            lines += [f"{name}: {answer.headers[name]}" for name in _PASSED
                      if name in answer.headers]
            lines.append("Connection: close")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            if method == "GET":
                async for chunk in answer.aiter_raw():
                    writer.write(chunk)
                    await writer.drain()
            await writer.drain()


async def _answer(writer: asyncio.StreamWriter, status: int, body: bytes) -> None:
    reason = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}[status]
    writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n"
                 f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    await writer.drain()
