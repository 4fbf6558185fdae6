"""A terminal in the guest: busybox's ``telnetd -i`` on a virtio-serial port.

The guest has no pty-making tool of ours, but busybox's telnetd in inetd mode does
exactly what a remote terminal needs: it makes a pty, runs a login program on it as a
session with that pty as its controlling terminal, and relays the pty over its stdin
and stdout (here a virtio-serial port, ``nixfarm.shN``) in the telnet protocol. So:

- keystrokes go as they are, a 0xFF byte doubled (IAC IAC); ^C is just byte 3,
  which the guest's line discipline turns into SIGINT;
- the window size goes as telnet's NAWS sub-negotiation (IAC SB NAWS w w h h IAC
  SE), which telnetd turns into TIOCSWINSZ (and the kernel into SIGWINCH);
- what comes back is the pty's output with telnet's commands mixed in (telnetd's
  option negotiation at start, IAC IAC for 0xFF), which ``Decoder`` removes.

The login program (``guest/agent``) runs the session's script as the build user
and leaves its exit status for the agent, which leaves it in ``xfer/ID.status``.

How a session's last output is not lost: telnetd (``-K``) ends the moment its login
program does, dropping whatever it has not yet read from the pty or relayed (with
two vCPUs a short command's whole output was lost so). The login program therefore
prints an end marker after the session's output (``END``, with a token per session)
and waits, ten seconds at most, for our answer (``ACK``) before it ends: once the
marker is here, everything before it is too. A session killed before its end has
no marker: its output is taken as complete after ``SETTLE`` seconds of quiet.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

IAC, SB, SE, NAWS = 255, 250, 240, 31
_OPTION_VERBS = range(251, 255)  # WILL, WONT, DO, DONT: one option byte follows
#: Seconds of quiet after the session's end before its output is taken as complete
#: (the end is told on the control port, the output comes on this one).
SETTLE = 0.3
#: Chunks read from the port and not yet taken by ``read``: a slow reader (the relay,
#: waiting for the client) stops the port's reading, and so the guest's writer.
QUEUED = 16
#: What the login program prints after the session's output: an APC sequence, which
#: terminals ignore, were it ever to reach one.
END = "\x1b_nixfarm-end-{token}\x1b\\"
#: Our answer to the end marker, a line the login program reads from the pty.
ACK = "nixfarm-ack-{token}\n"


def encode(data: bytes) -> bytes:
    return data.replace(b"\xff", b"\xff\xff")


def window(rows: int, cols: int) -> bytes:
    size = encode(struct.pack(">HH", cols, rows))
    return bytes([IAC, SB, NAWS]) + size + bytes([IAC, SE])


class Decoder:
    """Telnet's stream to the terminal's bytes, across chunk boundaries."""

    def __init__(self) -> None:
        self._state = "data"

    def feed(self, chunk: bytes) -> bytes:
        out = bytearray()
        for byte in chunk:
            state = self._state
            if state == "data":
                if byte == IAC:
                    self._state = "iac"
                else:
                    out.append(byte)
            elif state == "iac":
                if byte == IAC:
                    out.append(IAC)
                    self._state = "data"
                elif byte in _OPTION_VERBS:
                    self._state = "option"
                elif byte == SB:
                    self._state = "sub"
                else:
                    self._state = "data"
            elif state == "option":
                self._state = "data"
            elif state == "sub":
                if byte == IAC:
                    self._state = "sub-iac"
            elif state == "sub-iac":
                self._state = "data" if byte == SE else "sub"
        return bytes(out)


class TelnetTerminal:
    """One session on a shell port (``terminal.Terminal``)."""

    def __init__(self, port: socket.socket, done: asyncio.Future[int],
                 stop: Callable[[], Awaitable[None]], release: Callable[[], None],
                 token: str | None = None) -> None:
        """``token``: the session's end marker's (``END``); None for a stream that
        has none (``sshd.SshStream``)."""
        self._port = port
        self._end = END.format(token=token).encode() if token else None
        self._ack = ACK.format(token=token).encode() if token else b""
        self._held = b""
        self._done = done
        self._stop = stop
        self._release = release
        self._output: asyncio.Queue[bytes] = asyncio.Queue(QUEUED)
        self._eof = False
        self._closed = False
        self._decoder = Decoder()
        self._reader = asyncio.ensure_future(self._read())

    def _decode(self, chunk: bytes) -> bytes:
        """What of ``chunk``, read from the port, is the terminal's."""
        return self._decoder.feed(chunk)

    def _until_end(self, data: bytes) -> tuple[bytes, bool]:
        """What of ``data`` comes before the end marker, and whether it came; the
        start of a marker cut across chunks is held back until the next."""
        if self._end is None:
            return data, False
        data = self._held + data
        self._held = b""
        at = data.find(self._end)
        if at >= 0:
            return data[:at], True
        for size in range(min(len(self._end) - 1, len(data)), 0, -1):
            if self._end.startswith(data[-size:]):
                self._held = data[-size:]
                return data[:-size], False
        return data, False

    @staticmethod
    def drain(port: socket.socket) -> None:
        """Drop what an earlier session on this port left unread."""
        port.setblocking(False)
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while port.recv(65536):
                pass

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if self._done.done():
                    try:
                        chunk = await asyncio.wait_for(loop.sock_recv(self._port, 65536),
                                                       SETTLE)
                    except TimeoutError:
                        break
                else:
                    receive = asyncio.ensure_future(loop.sock_recv(self._port, 65536))
                    either: list[asyncio.Future[Any]] = [receive, self._done]
                    await asyncio.wait(either,
                                       return_when=asyncio.FIRST_COMPLETED)
                    if not receive.done():
                        receive.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await receive
                        continue
                    chunk = receive.result()
                if not chunk:
                    break
                data, ended = self._until_end(self._decode(chunk))
                if data:
                    await self._output.put(data)
                if ended:
                    # Everything is here: the login program may end now.
                    await loop.sock_sendall(self._port, encode(self._ack))
                    break
            if self._held:  # a session ended without its marker: what looked like its start
                await self._output.put(self._held)
        except OSError:
            pass
        finally:
            self._eof = True
            with contextlib.suppress(asyncio.QueueFull):  # then ``read`` sees _eof
                self._output.put_nowait(b"")

    async def read(self) -> bytes:
        if self._eof and self._output.empty():
            return b""
        return await self._output.get()

    async def write(self, data: bytes) -> None:
        if not self._closed and not self._done.done():
            with contextlib.suppress(OSError):
                await asyncio.get_running_loop().sock_sendall(self._port, encode(data))

    def resize(self, rows: int, cols: int) -> None:
        if not self._closed and not self._done.done():
            with contextlib.suppress(OSError):
                self._port.send(window(rows, cols))

    async def wait(self) -> int:
        return await asyncio.shield(self._done)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._done.done():
            await self._stop()
            with contextlib.suppress(TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(self._done), 5.0)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        self._release()
