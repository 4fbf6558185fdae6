"""The host's end of a terminal session in the guest: its end marker and answer.

The guest's side here is the other end of a socket pair, written as telnetd and
the agent's login program write (``nixfarm/runner/vm/guest/agent``); the whole
session in a VM is in test_conformance.py.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from nixfarm.runner.vm import telnet
from nixfarm.runner.vm.telnet import TelnetTerminal

pytestmark = pytest.mark.anyio
TOKEN = "0123456789abcdef"


async def session(chunks: list[bytes], killed: bool = False) -> tuple[bytes, bytes]:
    """What the terminal gives for ``chunks`` sent by the guest, and what the guest
    is sent back; ``killed``: the session ends after them (as shellstop ends it)."""
    host, guest = socket.socketpair()
    host.setblocking(False)
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def stop() -> None:
        pass

    terminal = TelnetTerminal(host, done, stop, lambda: None, TOKEN)
    try:
        for chunk in chunks:
            guest.sendall(chunk)
            await asyncio.sleep(0.01)
        if killed:
            done.set_result(137)
        seen = b""
        async with asyncio.timeout(10):
            while chunk := await terminal.read():
                seen += chunk
        guest.setblocking(False)
        try:
            answer = guest.recv(1000)
        except BlockingIOError:
            answer = b""
        return seen, answer
    finally:
        if not done.done():
            done.set_result(0)
        await terminal.close()
        guest.close()
        host.close()


@pytest.mark.parametrize("cut", [1, 2, 5, 20, 30])
async def test_the_output_ends_at_the_marker_wherever_it_is_cut(cut: int) -> None:
    end = telnet.END.format(token=TOKEN).encode()
    stream = b"\xff\xfb\x01last line\r\n" + end + b"nixfarm-ack-" + TOKEN.encode() + b"\r\n"
    at = stream.index(end) + cut
    seen, answer = await session([stream[:at], stream[at:]])
    assert seen == b"last line\r\n"
    assert answer == telnet.ACK.format(token=TOKEN).encode()


async def test_what_only_looks_like_the_marker_s_start_is_output() -> None:
    end = telnet.END.format(token=TOKEN).encode()
    seen, _ = await session([b"a\x1b", b"_nixfarm-e", b"nd-other\x1b[0m", b"\r\n", end])
    assert seen == b"a\x1b_nixfarm-end-other\x1b[0m\r\n"


async def test_another_session_s_marker_does_not_end_this_one() -> None:
    other = telnet.END.format(token="f" * 16).encode()
    end = telnet.END.format(token=TOKEN).encode()
    seen, _ = await session([b"one" + other + b"two", end])
    assert seen == b"one" + other + b"two"



async def test_a_session_ended_without_its_marker_keeps_its_last_bytes() -> None:
    # Killed (shellstop): no marker comes; what could have been its start is output.
    seen, answer = await session([b"colour \x1b[31mred\x1b"], killed=True)
    assert seen == b"colour \x1b[31mred\x1b" and answer == b""
