"""The host's end of the guest agent: a control port and an output port.

The guest has no vsock here, so the agent (``guest/agent``, a busybox shell
script) talks over two virtio-serial ports, each a socket pair between us and
qemu. What cannot go through a port as a line goes through ``xfer/``, a directory
of the job's state shared with the guest (virtiofs): a task's script, its stdin,
and what ``get`` copies out.

    control port, host -> guest           guest -> host
      run ID UID CAPTURE TOKEN              ready UPTIME [PHASE=SECONDS...]  (once, at boot)
      call ID UID                           fatal MESSAGE    (boot failed; it powers off)
      stop ID
      poweroff                              done ID STATUS
      shell N ID TOKEN
      ssh N ID
      shellstop N

    output port, guest -> host: task output as it is written, then "\\0TOKEN\\n"

``call`` runs ``xfer/ID.sh`` as UID to its end with its output in ``xfer/ID.out``:
no session and no streaming, so fewer programs for the guest to start (each one
costs under TCG), for the host's own short commands (``put``). ``run`` starts
``xfer/ID.sh`` as UID (stdin ``xfer/ID.in`` when present) in its own
session; its stdout and stderr stream to the output port (with CAPTURE=1 stdout
goes to ``xfer/ID.out`` instead). When everything holding that output has closed
it, the agent writes the run's TOKEN (after a NUL, before a newline), then
``done``. ``shell`` starts a terminal session on port ``nixfarm.shN`` running
``xfer/ID.sh`` as the build user (``vm.telnet``); its status is left in
``xfer/ID.status``.
TOKEN is random per run and never shown to the task, so output cannot
end a run early. One run streams at a time (the
output port is one stream); ``stop`` kills a run's process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from collections.abc import Callable

from nixfarm.runner.sandbox.base import SandboxError
from nixfarm.runner.shielding import uncancelled, until_either

#: Called with output bytes as they arrive.
OutputCallback = Callable[[bytes], None]


class _Output:
    """One run's output: bytes before its end marker go to ``feed``."""

    def __init__(self, token: str, feed: OutputCallback) -> None:
        self.marker = f"\0{token}\n".encode()
        self._feed = feed
        self.ended = asyncio.Event()
        # What ``feed`` raised (the log limit, say): the run is stopped and the caller
        # gets it, not the background task that reads the output.
        self.error: BaseException | None = None
        self.failed = asyncio.Event()
        self._held = b""

    def feed(self, data: bytes) -> None:
        if self.error is not None:
            return  # the rest of a failed run's output is dropped
        try:
            self._feed(data)
        except Exception as e:
            self.error = e
            self.failed.set()

    def take(self, data: bytes) -> bytes:
        """Consume ``data``; return what came after the end marker."""
        data = self._held + data
        at = data.find(self.marker)
        if at >= 0:
            self._held = b""
            if at:
                self.feed(data[:at])
            self.ended.set()
            return data[at + len(self.marker) :]
        # A marker may be cut between two reads: hold back only a tail that could
        # be its start (it begins with NUL, rare in output), so lines go at once.
        keep = next((n for n in range(min(len(data), len(self.marker) - 1), 0, -1)
                     if self.marker.startswith(data[-n:])), 0)  # fmt: skip
        self._held = data[len(data) - keep :]
        if len(data) > keep:
            self.feed(data[: len(data) - keep])
        return b""


class AgentChannel:
    """Speaks the protocol above over the two connected sockets."""

    def __init__(self, control: socket.socket, output: socket.socket, name: str = "") -> None:
        self._control_socket = control
        self._output_socket = output
        self.name = name
        self._writer: asyncio.StreamWriter | None = None
        self._output_writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ready: asyncio.Future[None] | None = None
        self._done: dict[str, asyncio.Future[int]] = {}
        self._current: _Output | None = None
        self._lock = asyncio.Lock()
        self._next_id = 0
        self._gone: str | None = None
        #: The guest's uptime when its agent said ``ready`` (kernel and init time).
        self.guest_uptime = 0.0
        #: The guest's uptime at each phase of its init (``guest/init``), as it said.
        self.guest_phases: dict[str, float] = {}

    async def open(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(sock=self._control_socket)
        # The output's writer is kept: dropping it would close the socket, and qemu
        # would tell the guest that nobody listens (its writes then block).
        output, self._output_writer = await asyncio.open_unix_connection(
            sock=self._output_socket)
        self._ready = asyncio.get_running_loop().create_future()
        # A boot failure nobody waits for any more is not an unretrieved exception.
        self._ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._tasks = [asyncio.create_task(self._read_control(reader)),
                       asyncio.create_task(self._read_output(output))]  # fmt: skip

    async def ready(self) -> None:
        """Wait for the agent's ``ready``; SandboxError if the guest failed to boot."""
        assert self._ready is not None
        await asyncio.shield(self._ready)

    def new_id(self) -> str:
        """A new run's id, also the name of its files in xfer/: not guessable, so the
        guest cannot have put anything at that name before the host writes it."""
        self._next_id += 1
        return f"{self._next_id}-{secrets.token_hex(8)}"

    async def run(self, run_id: str, uid: int, capture: bool, feed: OutputCallback,
                  on_started: Callable[[], None] | None = None) -> int:
        """Start run ``run_id`` (its files are in place) and return its exit status
        once its output has ended. Cancelled: the run is stopped, then this raises."""
        async with self._lock:
            token = secrets.token_hex(16)
            done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._done[run_id] = done
            self._current = output = _Output(token, feed)
            try:
                await self._send(f"run {run_id} {uid} {int(capture)} {token}")
                if on_started is not None:
                    on_started()
                # Shielded: a cancelled caller must not cancel ``done``, which
                # ``_stop`` still waits on.
                await until_either(done, output.failed)
                if output.error is not None:
                    raise output.error
                status = await asyncio.shield(done)
                await output.ended.wait()
                if output.error is not None:
                    raise output.error
                return status
            except BaseException:
                await uncancelled(self._stop(run_id, done, output))
                raise
            finally:
                self._done.pop(run_id, None)
                self._current = None

    async def call(self, run_id: str, uid: int) -> int:
        """Run ``run_id`` (its files are in place) to its end; return its exit status.
        Its output is in ``xfer/ID.out``. It cannot be stopped: keep it short."""
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._done[run_id] = done
        try:
            await self._send(f"call {run_id} {uid}")
            return await asyncio.shield(done)
        finally:
            self._done.pop(run_id, None)

    async def _stop(self, run_id: str, done: asyncio.Future[int], output: _Output) -> None:
        if self._gone is not None:
            return
        with contextlib.suppress(OSError, SandboxError):
            await self._send(f"stop {run_id}")
        # Its end is awaited (briefly), so that its output is not taken for the next run's.
        with contextlib.suppress(TimeoutError, SandboxError):
            async with asyncio.timeout(5.0):
                await asyncio.shield(done)
                await output.ended.wait()

    async def shell(self, port: int, run_id: str, token: str) -> None:
        """Start a terminal session on shell port ``port`` (its script, ``run_id``, in
        place; its output ends with ``telnet.END`` made of ``token``)."""
        await self._send(f"shell {port} {run_id} {token}")

    async def ssh(self, port: int, run_id: str) -> None:
        """Start sshd on shell port ``port`` (``vm.sshd``; set up before)."""
        await self._send(f"ssh {port} {run_id}")

    async def stop_shell(self, port: int) -> None:
        with contextlib.suppress(OSError, SandboxError):
            await self._send(f"shellstop {port}")

    async def poweroff(self) -> None:
        with contextlib.suppress(OSError, SandboxError):
            await self._send("poweroff")

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            # Closing never fails for what a reader met before: the VM goes anyway.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for writer in (self._writer, self._output_writer):
            if writer is not None:
                writer.close()
        self._control_socket.close()
        self._output_socket.close()

    async def _send(self, line: str) -> None:
        if self._gone is not None or self._writer is None:
            raise SandboxError(f"The VM's agent is gone: {self._gone}.", sandbox=self.name)
        self._writer.write(line.encode() + b"\n")
        await self._writer.drain()

    async def _read_control(self, reader: asyncio.StreamReader) -> None:
        assert self._ready is not None
        while line := await reader.readline():
            word, _, rest = line.decode(errors="replace").strip().partition(" ")
            if word == "ready" and not self._ready.done():
                uptime, *phases = rest.split() or ["0"]
                with contextlib.suppress(ValueError):
                    self.guest_uptime = float(uptime)
                for phase in phases:
                    name, _, seconds = phase.partition("=")
                    with contextlib.suppress(ValueError):
                        self.guest_phases[name] = float(seconds)
                self._ready.set_result(None)
            elif word == "fatal":
                self._fail(f"the guest failed to boot: {rest}")
            elif word == "done":
                run_id, _, status = rest.partition(" ")
                waiting = self._done.get(run_id)
                if waiting is not None and not waiting.done():
                    waiting.set_result(int(status) if status.isdigit() else 255)
        self._fail("the VM stopped")

    async def _read_output(self, reader: asyncio.StreamReader) -> None:
        while chunk := await reader.read(65536):
            while chunk and self._current is not None and not self._current.ended.is_set():
                chunk = self._current.take(chunk)
            # Anything else is output of a process that outlived its run: dropped.

    def _fail(self, why: str) -> None:
        if self._gone is None:
            self._gone = why
        error = SandboxError(f"The VM's agent is gone: {self._gone}.", sandbox=self.name)
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)
        for waiting in self._done.values():
            if not waiting.done():
                waiting.set_exception(error)
        if self._current is not None:
            self._current.ended.set()
