"""Running nix commands from asyncio, with live stderr and errors that say what broke.

Nix reports progress and build logs on stderr and results on stdout. :func:`run`
hands every stderr line to a callback the moment it arrives (that is how build logs
reach a browser while the build runs), keeps a bounded tail for the error, and turns a
non-zero exit into a :class:`NixError` naming the derivation whose builder failed,
parsed from Nix's ``error: builder for '/nix/store/...drv' failed ...`` line.

Stopping nix takes care: Nix starts each builder in a session of its own, so killing
nix's process group with SIGKILL would leave the builder running and holding the
output lock. Nix kills its builders itself when it gets SIGTERM, so a timeout (or a
cancelled caller) sends SIGTERM to nix's process group first and SIGKILL only if nix
has not gone after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nixfarm.errors import NixError, NixTimeout, NotFound
from nixfarm.nix.hashes import normalise_hash

TAIL_LINES = 200
MAX_LINE = 8192
TERMINATE_GRACE = 5.0
NIX_COMMAND = ("--extra-experimental-features", "nix-command")

_BUILDER_FAILED = re.compile(r"builder for '(/[^']+\.drv)' failed (.*?);?$")
_BUILDING = re.compile(r"^building '(/[^']+\.drv)'")
_QUOTED_DRV = re.compile(r"'(/[^']+\.drv)'")


class _StderrWatcher:
    """Splits stderr into lines, forwards them, and remembers what Nix said failed."""

    def __init__(self, on_line: Callable[[str], None] | None) -> None:
        self.on_line = on_line
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.errors: list[str] = []
        self.failed_drv = ""
        self.building: list[str] = []
        self._partial = b""

    def feed(self, data: bytes) -> None:
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            self._line(line)
        if len(self._partial) > MAX_LINE:
            self._line(self._partial)
            self._partial = b""

    def close(self) -> None:
        if self._partial:
            self._line(self._partial)
            self._partial = b""

    def _line(self, raw: bytes) -> None:
        line = raw.decode(errors="replace").rstrip("\r")[:MAX_LINE]
        self.tail.append(line)
        if line.startswith("error:"):
            self.errors.append(line[len("error:") :].strip())
            failed = _BUILDER_FAILED.search(line)
            if failed and not self.failed_drv:
                self.failed_drv = failed.group(1)
        building = _BUILDING.match(line)
        if building:
            self.building.append(building.group(1))
        if self.on_line is not None:
            self.on_line(line)

    def error(self, command: str, returncode: int) -> NixError:
        drv = self.failed_drv
        if not drv:
            for error in self.errors:
                quoted = _QUOTED_DRV.search(error)
                if quoted:
                    drv = quoted.group(1)
                    break
        if self.failed_drv:
            reason = next(e for e in self.errors if self.failed_drv in e).rstrip(";")
        elif self.errors:
            reason = self.errors[0].rstrip(";")
        else:
            last = next((line for line in reversed(self.tail) if line.strip()), "")
            reason = f"it exited with code {returncode}" + (f" ({last.strip()})" if last else "")
        return NixError(f"{command} failed: {reason}.", drv=drv, log_tail=list(self.tail))


async def _terminate(process: asyncio.subprocess.Process) -> None:
    """Stop nix and everything it started (see the module docstring)."""
    if process.returncode is not None:
        return
    for sig, wait in ((signal.SIGTERM, TERMINATE_GRACE), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            await asyncio.wait_for(process.wait(), wait)
            return
        except TimeoutError:
            continue


async def run(
    args: Sequence[str],
    *,
    timeout: float | None = None,  # noqa: ASYNC109 - expiry must also stop nix, not just us
    on_line: Callable[[str], None] | None = None,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
) -> str:
    """Run ``args`` and return its stdout.

    ``env`` is laid over the current environment. Raises NixError (with ``drv`` and
    ``log_tail``) on a non-zero exit and NixTimeout after ``timeout`` seconds.
    """
    command = os.path.basename(args[0])
    try:
        process = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **env} if env is not None else None,
            start_new_session=True,  # its own process group, so we can stop all of it
        )
    except OSError as exc:
        raise NixError(f"Cannot run {command}: {exc.strerror}.") from exc
    watcher = _StderrWatcher(on_line)

    async def feed_stdin() -> None:
        assert process.stdin is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            process.stdin.write(stdin or b"")
            await process.stdin.drain()
        process.stdin.close()

    async def read_stdout() -> bytes:
        assert process.stdout is not None
        return await process.stdout.read()

    async def read_stderr() -> None:
        assert process.stderr is not None
        while chunk := await process.stderr.read(65536):
            watcher.feed(chunk)
        watcher.close()

    async def communicate() -> bytes:
        jobs: list[Any] = [read_stdout(), read_stderr()]
        if stdin is not None:
            jobs.append(feed_stdin())
        results = await asyncio.gather(*jobs)
        await process.wait()
        output: bytes = results[0]
        return output

    try:
        stdout = await asyncio.wait_for(communicate(), timeout)
    except TimeoutError:
        await _terminate(process)
        drv = watcher.building[-1] if len(watcher.building) == 1 else ""
        where = f" while building {drv}" if drv else ""
        raise NixTimeout(
            f"{command} did not finish within {timeout:g} seconds{where}.",
            drv=drv,
            log_tail=list(watcher.tail),
            seconds=timeout or 0.0,
        ) from None
    finally:
        # Cancelled, or on_line raised: do not leave nix (or its builders) behind.
        await asyncio.shield(_terminate(process))
    if process.returncode != 0:
        raise watcher.error(command, process.returncode or 0)
    return stdout.decode(errors="replace")


def _store_args(store: str | None) -> list[str]:
    return ["--store", store] if store else []


async def query_closure(paths: Sequence[str], store: str | None = None) -> list[str]:
    """The closure of ``paths`` (themselves included), as ``nix-store -qR`` lists it."""
    if not paths:
        return []
    output = await run(["nix-store", *_store_args(store), "--query", "--requisites", *paths])
    return output.split()


@dataclass
class PathInfo:
    path: str
    nar_hash: str  # sha256:<nix32>
    nar_size: int
    references: list[str] = field(default_factory=list)  # full paths
    deriver: str | None = None  # full path
    ca: str | None = None
    sigs: list[str] = field(default_factory=list)


async def path_info(paths: Sequence[str], store: str | None = None) -> list[PathInfo]:
    """Metadata of valid store paths from ``nix path-info --json``.

    Raises NotFound for a path the store does not hold.
    """
    if not paths:
        return []
    # It is a query: asking substituters about missing paths only costs time.
    output = await run(
        ["nix", *NIX_COMMAND, "path-info", "--json", "--option", "substituters", "",
         *_store_args(store), *paths]
    )  # fmt: skip
    infos = []
    for entry in json.loads(output):
        if not entry.get("valid", True) or "narHash" not in entry:
            raise NotFound(f"Store path {entry['path']} is not valid.", "store path", entry["path"])
        infos.append(
            PathInfo(
                path=entry["path"],
                # Nix 2.8 prints SRI (sha256-<base64>), older ones sha256:<nix32>.
                nar_hash=normalise_hash(entry["narHash"]),
                nar_size=int(entry["narSize"]),
                references=list(entry.get("references", [])),
                deriver=entry.get("deriver") or None,
                ca=entry.get("ca") or None,
                sigs=list(entry.get("signatures", [])),
            )
        )
    return infos
