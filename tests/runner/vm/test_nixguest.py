"""The host's end of a VM's Nix port, without a VM: the test speaks the relay's frames
(``guest/nixrelay.py``) on one end of a socket pair, an echo server stands for the proxy."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nixfarm.runner.vm.nixguest import NixPort

pytestmark = pytest.mark.anyio
HEADER = struct.Struct("<II")


@pytest.fixture
async def echo(tmp_path: Path) -> AsyncIterator[tuple[Path, list[int]]]:
    """A Unix socket answering each connection with what it reads, upper-cased;
    (its path, how many connections it has had)."""
    seen: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(1)
        while data := await reader.read(1024):
            writer.write(data.upper())
            await writer.drain()
        writer.close()

    path = tmp_path / "proxy.sock"
    server = await asyncio.start_unix_server(serve, str(path))
    yield path, seen
    server.close()


async def frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    conn, size = HEADER.unpack(await reader.readexactly(HEADER.size))
    return conn, await reader.readexactly(size)


async def test_each_guest_connection_is_a_connection_to_the_proxy(
        echo: tuple[Path, list[int]]) -> None:
    path, seen = echo
    host, guest = socket.socketpair()
    port = NixPort(host, path, "test")
    await port.open()
    reader, writer = await asyncio.open_connection(sock=guest)
    try:
        writer.write(HEADER.pack(1, 5) + b"hello" + HEADER.pack(2, 3) + b"abc")
        answers = dict([await frame(reader), await frame(reader)])
        assert answers == {1: b"HELLO", 2: b"ABC"} and len(seen) == 2
        # The guest closes 1: the proxy's connection goes, and says so; 2 lives on.
        writer.write(HEADER.pack(1, 0) + HEADER.pack(2, 2) + b"de")
        got = [await frame(reader), await frame(reader)]
        assert sorted(got) == [(1, b""), (2, b"DE")]
        # A frame larger than the relay ever sends ends the port.
        writer.write(HEADER.pack(3, 1 << 30))
        assert await reader.read(100) == b""
    finally:
        writer.close()
        await port.close()
