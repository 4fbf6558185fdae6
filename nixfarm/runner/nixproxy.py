"""A job's Nix daemon socket: a worker-protocol filter in front of the runner's daemon.

Every job with Nix gets its own socket (bound in the sandbox at the daemon's usual
place). Behind it, this proxy speaks the Nix worker protocol with the job's client
and passes on only what a build needs, for paths in the job's *view*:

- the view starts as the job's image closure (what the sandbox binds);
- a path the job adds (``AddToStore``, ``AddTextToStore``) joins it: the proxy
  computes its store path from the bytes as they pass, as the daemon will;
- a derivation the job adds brings its outputs (read from the derivation's text, and
  taken once the daemon has registered it: it checks they are the derivation's own);
- the references of a path added must already be in the view, and so must every
  path the job asks to build, realise, root, read as a NAR or query in depth.

Paths outside the view do not exist for the job: ``IsValidPath`` says no,
``QueryPathInfo`` says unknown, ``QueryValidPaths`` drops them. So a job cannot name
another tenant's store path into a derivation (``builtins.storePath``), build it,
dump it or learn that it exists; and it gets its own copy of a source another
tenant happened to add, since the client is told to upload it.

Operations that touch the store as a whole or other users' paths are refused with a
message naming them, and the connection is closed: garbage collection and deleting
paths (``CollectGarbage``), ``FindRoots``, ``QueryAllValidPaths``, ``QueryReferrers``,
``VerifyStore``, ``OptimiseStore``, imports of NARs (``AddToStoreNar``,
``AddMultipleToStore``, ``ImportPaths``: signed input is for trusted users anyway),
``BuildDerivation`` (an inline derivation: its inputs are not checked here),
``AddSignatures``, CA realisations and build logs. ``AddIndirectRoot`` and
``SyncWithGC`` are answered here without reaching the daemon: a root the job makes
points into the sandbox, which the daemon must not follow.

The proxy parses only requests; the daemon's answers flow back unchanged (the
protocol is strictly one request, one answer, so an answer the proxy gives itself
never interleaves with one of the daemon's). One exception, for a proxy given a
``settle`` hook (a VM's, whose guest sees the paths of the view: ``vm.nixguest``):
the answer to a request that can make paths valid (adding, building) is read up to
its ``STDERR_LAST`` (or error), the hook is awaited, and only then does the client
get the rest: when ``nix-build`` returns, the guest already sees what it built.

The daemon sees the runner as its client; the runner's own daemon trusts nobody
(``trusted-users =``, see ``nixd``), so the job's settings are still those of an
untrusted user.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import stat
import struct
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from nixfarm.nix import nix32

log = logging.getLogger("nixfarm.runner.nixproxy")

STORE = "/nix/store"
_MAGIC_1 = 0x6E697863
_MAGIC_2 = 0x6478696F
#: Connections one job may have open to its daemon at once (each is a daemon worker).
MAX_CONNECTIONS = 32
_STDERR_LAST = 0x616C7473
_STDERR_ERROR = 0x63787470
_STDERR_WRITE = 0x64617416
_STDERR_NEXT = 0x6F6C6D67
_STDERR_START_ACTIVITY = 0x53545254
_STDERR_STOP_ACTIVITY = 0x53544F50
_STDERR_RESULT = 0x52534C54
#: Requests after whose answer new paths of the view may be valid (AddToStore,
#: AddTextToStore, BuildPaths, EnsurePath, BuildPathsWithResults): a ``settle`` hook
#: runs before the client is told they are done.
_SETTLING = frozenset({7, 8, 9, 10, 46})
_MAX_STRING = 64 * 1024**2
_MAX_DRV = 16 * 1024**2
_PATH = re.compile(r"/nix/store/[0123456789abcdfghijklmnpqrsvwxyz]{32}-[A-Za-z0-9+\-._?=]+")

#: Operations by number (Nix 2.8's worker-protocol.hh), for messages.
OPS = {
    1: "IsValidPath", 3: "HasSubstitutes", 4: "QueryPathHash", 5: "QueryReferences",
    6: "QueryReferrers", 7: "AddToStore", 8: "AddTextToStore", 9: "BuildPaths",
    10: "EnsurePath", 11: "AddTempRoot", 12: "AddIndirectRoot", 13: "SyncWithGC",
    14: "FindRoots", 16: "ExportPath", 18: "QueryDeriver", 19: "SetOptions",
    20: "CollectGarbage", 21: "QuerySubstitutablePathInfo", 22: "QueryDerivationOutputs",
    23: "QueryAllValidPaths", 24: "QueryFailedPaths", 25: "ClearFailedPaths",
    26: "QueryPathInfo", 27: "ImportPaths", 28: "QueryDerivationOutputNames",
    29: "QueryPathFromHashPart", 30: "QuerySubstitutablePathInfos", 31: "QueryValidPaths",
    32: "QuerySubstitutablePaths", 33: "QueryValidDerivers", 34: "OptimiseStore",
    35: "VerifyStore", 36: "BuildDerivation", 37: "AddSignatures", 38: "NarFromPath",
    39: "AddToStoreNar", 40: "QueryMissing", 41: "QueryDerivationOutputMap",
    42: "RegisterDrvOutput", 43: "QueryRealisation", 44: "AddMultipleToStore",
    45: "AddBuildLog", 46: "BuildPathsWithResults",
}


class Refused(Exception):
    """The job asked for something it may not have; the message goes to its client."""


class _Closed(Exception):
    """A side hung up."""


class StoreView:
    """The store paths one job may see (see the module docstring). Shared by the
    job's connections.

    A derivation's outputs are taken from its text only once the daemon has
    registered it (it checks the outputs are the derivation's own before it does):
    until then they wait in ``pending``, so a forged ``.drv`` text naming another
    tenant's path as its output opens nothing.
    """

    def __init__(self, paths: Iterable[str] = ()) -> None:
        self.paths: set[str] = set(paths)
        #: output -> the derivation naming it, not yet known to be valid
        self.pending: dict[str, str] = {}
        #: derivations whose inputs, all the way down, are in the view
        self.checked: set[str] = set()
        #: whether ``pending`` may have changed since it was last checked (then, or a
        #: second later, it is checked again: one nix-store at a time, not one per query)
        self.stale = True
        self._checked_at = 0.0
        self._checking = asyncio.Lock()

    def add(self, path: str) -> None:
        self.paths.add(path)

    def add_derivation(self, drv: str, outputs: Iterable[str]) -> None:
        self.paths.add(drv)
        self.stale = True
        for output in outputs:
            if output not in self.paths:
                self.pending.setdefault(output, drv)

    async def sees(self, path: str) -> bool:
        """Whether ``path`` (a store path, maybe ``!outputs``) is in the view."""
        base = path.split("!", 1)[0]
        if base in self.paths:
            return True
        if base not in self.pending:
            return False
        async with self._checking:
            now = time.monotonic()
            if base in self.pending and (self.stale or now - self._checked_at >= 1.0):
                self.stale = False
                self._checked_at = now
                # Every derivation waiting is checked at once: one nix-store for a whole
                # build, and at most one a second for a client that asks again and again
                # about outputs of derivations the daemon would not take.
                drvs = sorted(set(self.pending.values()))
                invalid = await invalid_paths(drvs)
                for output, drv in list(self.pending.items()):
                    if drv not in invalid:
                        self.paths.add(output)
                        del self.pending[output]
        return base in self.paths

    async def check(self, path: str, why: str) -> None:
        """Raise Refused unless ``path`` is in the view."""
        if not await self.sees(path):
            raise Refused(f"{path.split('!', 1)[0]} is not a store path of this job ({why}): "
                          "a job may use its image's closure, what it added and what its "
                          "derivations build.")

    async def check_inputs(self, drv: str, added: Derivation | None = None) -> None:
        """Raise Refused unless every input of the derivation ``drv`` (its
        ``inputSrcs`` and ``inputDrvs``) is in the view.

        Given ``added`` (a derivation being added), its own inputs are checked; without,
        ``drv`` is about to be built: it is read from the store, and so is every
        derivation it takes outputs from, all the way down (the daemon builds them too,
        each with its inputs in its sandbox). A derivation's text names its inputs
        whatever references its adder declared, so this is what keeps a hand-written
        ``.drv`` from binding another tenant's path into a build.
        """
        todo = [(drv, added)]
        while todo:
            path, parsed = todo.pop()
            if path in self.checked:
                continue
            if parsed is None:
                parsed = readable(path, await asyncio.to_thread(_read_derivation, path))
            for source in parsed.input_srcs:
                await self.check(source, f"an input of {path}")
            for input_drv in parsed.input_drvs:
                await self.check(input_drv, f"an input of {path}")
                if added is None:
                    todo.append((input_drv, None))
            if added is None:
                self.checked.add(path)


def readable(path: str, text: bytes) -> Derivation:
    """``text`` parsed as the derivation ``path``; Refused when it is not one."""
    try:
        return parse_derivation(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise Refused(f"{path} is not a derivation this proxy can read: {e}") from None


def _read_derivation(path: str) -> bytes:
    """A derivation's text from the runner's store (never through a symbolic link)."""
    if not _PATH.fullmatch(path):
        raise Refused(f"{path!r} is not a store path")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise Refused(f"{path} is not a derivation in the store ({e.strerror})") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_DRV:
            raise Refused(f"{path} is not a derivation this proxy can read")
        return file.read(_MAX_DRV + 1)


async def invalid_paths(paths: list[str]) -> set[str]:
    """Which of ``paths`` are not valid in the runner's store (asked as the runner)."""
    invalid: set[str] = set()
    for start in range(0, len(paths), 2000):  # argv stays far below ARG_MAX
        batch = paths[start:start + 2000]
        process = await asyncio.create_subprocess_exec(
            "nix-store", "--check-validity", "--print-invalid", *batch,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL)
        out, _ = await process.communicate()
        if process.returncode != 0:
            invalid.update(batch)  # cannot tell: none of them counts
        else:
            invalid.update(out.decode().split())
    return invalid


def store_path(kind: str, digest: bytes, name: str) -> str:
    """Nix's makeStorePath: the path of ``name`` made as ``kind`` from ``digest``."""
    text = f"{kind}:sha256:{digest.hex()}:{STORE}:{name}".encode()
    full = hashlib.sha256(text).digest()
    short = bytearray(20)
    for index, byte in enumerate(full):
        short[index % 20] ^= byte
    return f"{STORE}/{nix32.encode(bytes(short))}-{name}"


def added_path(name: str, method: str, digest_of: dict[str, bytes],
               references: Iterable[str]) -> str:
    """The path ``AddToStore`` makes of ``name`` with content-address ``method``
    (``text:sha256``, ``fixed:r:sha256``, ``fixed:sha1``, ...); ``digest_of`` maps
    hash algorithms to the digests of the bytes sent."""
    refs = "".join(f":{r}" for r in sorted(references))
    if method == "text:sha256":
        return store_path("text" + refs, digest_of["sha256"], name)
    if not method.startswith("fixed:"):
        raise Refused(f"content address method {method!r} is not supported here")
    rest = method[len("fixed:"):]
    recursive = rest.startswith("r:")
    algo = rest[2:] if recursive else rest
    if algo not in digest_of:
        raise Refused(f"hash algorithm {algo!r} is not supported here")
    if recursive and algo == "sha256":
        return store_path("source" + refs, digest_of["sha256"], name)
    if refs:
        raise Refused("a fixed-output path with references must be sha256, recursive")
    inner = f"fixed:out:{'r:' if recursive else ''}{algo}:{digest_of[algo].hex()}:"
    return store_path("output:out", hashlib.sha256(inner.encode()).digest(), name)


@dataclass(frozen=True)
class Derivation:
    """What the proxy reads of a derivation's ATerm text: the paths it names."""

    outputs: dict[str, str]  # output name -> path ("" when not known yet)
    input_drvs: dict[str, list[str]]  # derivation -> the outputs it takes
    input_srcs: list[str]


_ESCAPES = {ord("n"): "\n", ord("r"): "\r", ord("t"): "\t"}


T = TypeVar("T")


class _ATerm:
    """A reader of the ``Derive(...)`` term Nix writes (its ``parseDerivation``)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    def expect(self, token: str) -> None:
        if not self.text.startswith(token, self.at):
            raise ValueError(f"expected {token!r} at offset {self.at}")
        self.at += len(token)

    def more(self) -> bool:
        """In a list: whether an item follows (eats the comma or the closing bracket)."""
        if self.text.startswith("]", self.at):
            self.at += 1
            return False
        return True

    def string(self) -> str:
        self.expect('"')
        out: list[str] = []
        while True:
            end = self.text.find('"', self.at)
            slash = self.text.find("\\", self.at)
            if end < 0:
                raise ValueError("unterminated string")
            if 0 <= slash < end:
                out.append(self.text[self.at:slash])
                char = self.text[slash + 1:slash + 2]
                out.append(_ESCAPES.get(ord(char), char) if char else "")
                self.at = slash + 2
                continue
            out.append(self.text[self.at:end])
            self.at = end + 1
            return "".join(out)

    def items(self, read: Callable[[], T]) -> list[T]:
        self.expect("[")
        found: list[T] = []
        while self.more():
            if found:
                self.expect(",")
            found.append(read())
        return found

    def strings(self) -> list[str]:
        return self.items(self.string)


def parse_derivation(text: bytes) -> Derivation:
    """The paths of a derivation's ATerm text; ValueError if it is not one."""
    term = _ATerm(text.decode())
    term.expect("Derive(")

    def output() -> tuple[str, str]:
        term.expect("(")
        name = term.string()
        term.expect(",")
        path = term.string()
        term.expect(",")
        term.string()
        term.expect(",")
        term.string()
        term.expect(")")
        return name, path

    def input_drv() -> tuple[str, list[str]]:
        term.expect("(")
        path = term.string()
        term.expect(",")
        outputs = term.strings()
        term.expect(")")
        return path, outputs

    outputs = dict(term.items(output))
    term.expect(",")
    input_drvs = dict(term.items(input_drv))
    term.expect(",")
    input_srcs = term.strings()
    for path in [*input_drvs, *input_srcs, *filter(None, outputs.values())]:
        if not _PATH.fullmatch(path):
            raise ValueError(f"{path!r} is not a store path")
    return Derivation(outputs, input_drvs, input_srcs)


class _Reader:
    def __init__(self, reader: asyncio.StreamReader, copy: bytearray) -> None:
        self._reader = reader
        self.copy = copy  # every byte read, to be forwarded as it was

    async def exactly(self, size: int) -> bytes:
        try:
            data = await self._reader.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError):
            raise _Closed from None
        self.copy += data
        return data

    async def u64(self) -> int:
        value: int = struct.unpack("<Q", await self.exactly(8))[0]
        return value

    async def string(self, limit: int = _MAX_STRING) -> bytes:
        size = await self.u64()
        if size > limit:
            raise Refused(f"a string of {size} bytes is more than this proxy takes")
        data = await self.exactly(size)
        await self.exactly(-size % 8)
        return data

    async def text(self) -> str:
        return (await self.string()).decode(errors="replace")

    async def strings(self) -> list[str]:
        count = await self.u64()
        if count > 1_000_000:
            raise Refused(f"a list of {count} strings is more than this proxy takes")
        return [await self.text() for _ in range(count)]


def _u64(value: int) -> bytes:
    return struct.pack("<Q", value)


def _string(data: bytes) -> bytes:
    return _u64(len(data)) + data + b"\0" * (-len(data) % 8)


def error_reply(message: str) -> bytes:
    """STDERR_ERROR as a client of protocol 1.26 or later reads it."""
    return (_u64(_STDERR_ERROR) + _string(b"Error") + _u64(0) + _string(b"Error")
            + _string(message.encode()) + _u64(0) + _u64(0))


class NixProxy:
    """One job's socket (``path``) in front of the daemon at ``upstream``."""

    def __init__(self, path: Path, upstream: Path, view: StoreView, job: str = "",
                 settle: Callable[[], Awaitable[None]] | None = None) -> None:
        self.path = path
        self.upstream = upstream
        self.view = view
        self.job = job
        #: Awaited once the daemon has done a request that may add valid paths, before
        #: the client hears so (see the module docstring); None: answers pass unread.
        self.settle = settle
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._serving = 0

    async def start(self, uid: int | None = None) -> None:
        """Listen; the socket is given to ``uid`` (the sandbox's host user) alone."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._accept, str(self.path))
        if uid is not None and os.geteuid() == 0:
            os.chown(self.path, uid, uid)
        self.path.chmod(0o600)

    async def stop(self) -> None:
        """Close the socket and every connection. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= 2 * MAX_CONNECTIONS:
            writer.close()  # a flood: not even a word
            return
        self._connections.add(task)
        try:
            if self._serving >= MAX_CONNECTIONS:
                # Each connection served is a root nix-daemon worker: a job gets a few,
                # not thousands. Told in the protocol, without asking the daemon.
                log.warning("job %s: more than %d Nix connections at once", self.job,
                            MAX_CONNECTIONS)
                await asyncio.wait_for(_refuse(reader, writer, (
                    f"nixfarm: a job may have at most {MAX_CONNECTIONS} connections to "
                    "its Nix daemon open at once")), 10)
                return
            self._serving += 1
            try:
                await self._serve(reader, writer)
            finally:
                self._serving -= 1
        except (_Closed, ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except Exception:
            log.exception("job %s: nix proxy connection failed", self.job)
        finally:
            self._connections.discard(task)
            writer.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
                     ) -> None:
        up_r, up_w = await asyncio.open_unix_connection(str(self.upstream))
        pump: asyncio.Task[None] | None = None
        try:
            copy = bytearray()
            client = _Reader(client_r, copy)
            if await client.u64() != _MAGIC_1:
                return
            up_w.write(bytes(copy))
            copy.clear()
            hello = await up_r.readexactly(16)
            client_w.write(hello)
            daemon_version = struct.unpack("<Q", hello[8:])[0]
            client_version = await client.u64()
            minor = min(client_version, daemon_version) & 0xFF
            if minor < 26 or (client_version >> 8) != 1:
                client_w.write(error_reply("nixfarm: this Nix client is too old for jobs"))
                return
            if minor >= 14 and await client.u64():
                await client.u64()  # CPU affinity
            if minor >= 11:
                await client.u64()  # reserveSpace, obsolete
            up_w.write(bytes(copy))
            copy.clear()
            pump = asyncio.create_task(_pump(up_r, client_w))
            op = 0
            while True:
                if op in (7, 8):
                    # The daemon has answered our last AddToStore (the client asks no
                    # more before): a derivation it added may be valid now.
                    self.view.stale = True
                op = await client.u64()
                settling = self.settle is not None and op in _SETTLING
                if settling and pump is not None:
                    # The previous answer is all with the client (it asked again): the
                    # pump holds nothing, and this answer is read here instead.
                    pump.cancel()
                    with contextlib.suppress(BaseException):
                        await pump
                    pump = None
                try:
                    local = await self._operation(op, client, minor, up_w)
                except Refused as e:
                    log.warning("job %s: refused %s: %s", self.job, OPS.get(op, op), e)
                    client_w.write(error_reply(f"nixfarm: {e}"))
                    await client_w.drain()
                    return
                if local is not None:
                    copy.clear()
                    client_w.write(local)
                    await client_w.drain()
                elif copy:
                    up_w.write(bytes(copy))
                    copy.clear()
                    await up_w.drain()
                if settling and pump is None:
                    if local is None:
                        await self._settled_answer(up_r, client_w)
                    pump = asyncio.create_task(_pump(up_r, client_w))
        finally:
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(BaseException):
                    await pump
            up_w.close()

    async def _settled_answer(self, up: asyncio.StreamReader,
                              client_w: asyncio.StreamWriter) -> None:
        """Pass on the daemon's log messages up to its last (or an error), await
        ``settle``, then pass that last one on: the rest follows through the pump."""
        assert self.settle is not None
        while True:
            copy = bytearray()
            kind = await _log_message(_Reader(up, copy))
            if kind in (_STDERR_LAST, _STDERR_ERROR):
                await self.settle()
                client_w.write(bytes(copy))
                await client_w.drain()
                return
            client_w.write(bytes(copy))
            await client_w.drain()

    async def _operation(self, op: int, client: _Reader, minor: int,
                         up: asyncio.StreamWriter) -> bytes | None:
        """Read operation ``op``'s arguments (they stay in ``client.copy`` to be sent
        on); return an answer to give instead of asking the daemon, or None."""
        view = self.view
        last = _u64(_STDERR_LAST)
        name = OPS.get(op, str(op))
        if op in (1, 26, 10, 11, 33, 38, 22, 41, 28):  # one store path
            path = await client.text()
            if await view.sees(path):
                return None
            if op == 1:  # IsValidPath: not for this job
                return last + _u64(0)
            if op == 26:  # QueryPathInfo: unknown
                return last + _u64(0)
            if op == 11:  # AddTempRoot of a path it cannot have: nothing to keep
                return last + _u64(1)
            if op == 33:  # QueryValidDerivers: none
                return last + _u64(0)
            await view.check(path, name)
        if op == 12:  # AddIndirectRoot: the link is in the sandbox; not the daemon's
            await client.text()
            return last + _u64(1)
        if op == 13:  # SyncWithGC
            return last + _u64(1)
        if op == 19:
            client.copy[:] = _u64(op) + await _set_options(client, minor)
            return None
        if op == 29:  # QueryPathFromHashPart, answered from the view
            part = await client.text()
            found = next((p for p in view.paths if p[len(STORE) + 1:].startswith(part + "-")),
                         "")
            return last + _string(found.encode())
        if op in (31, 32):  # QueryValidPaths / QuerySubstitutablePaths
            paths = [p for p in await client.strings() if await view.sees(p)]
            substitute = await client.u64() if op == 31 and minor >= 27 else None
            # The request goes on rewritten: only the paths in the view.
            client.copy[:] = _u64(op) + _u64(len(paths)) + b"".join(
                _string(p.encode()) for p in paths)
            if substitute is not None:
                client.copy += _u64(substitute)
            return None
        if op == 30:  # QuerySubstitutablePathInfos: only of paths in view
            count = await client.u64()
            for _ in range(count):
                await view.check(await client.text(), name)
                await client.string()
            return None
        if op in (9, 46, 40):  # BuildPaths, BuildPathsWithResults, QueryMissing
            for path in await client.strings():
                await view.check(path, name)
                base = path.split("!", 1)[0]
                if op != 40 and base.endswith(".drv"):
                    await view.check_inputs(base)
            if op != 40 and await client.u64() != 0:
                raise Refused(f"{name} may only build normally (no repair or check)")
            return None
        if op == 7:
            await self._add_to_store(client, up)
            return None
        if op == 8:  # AddTextToStore (older clients)
            suffix = await client.text()
            text = await client.string()
            refs = await client.strings()
            for ref in refs:
                await view.check(ref, f"a reference of {suffix}")
            await self._added(added_path(suffix, "text:sha256",
                                         {"sha256": hashlib.sha256(text).digest()}, refs), text)
            return None
        raise Refused(f"{name} is not available to jobs")

    async def _add_to_store(self, client: _Reader, up: asyncio.StreamWriter) -> None:
        name = await client.text()
        method = await client.text()
        refs = await client.strings()
        if await client.u64():
            raise Refused("AddToStore may not repair paths")
        if name.endswith(".drv") and method != "text:sha256":
            # Nix adds derivations as text; one added otherwise would be built all the
            # same, its text never read here.
            raise Refused(f"a derivation ({name}) may only be added as text")
        for ref in refs:
            await self.view.check(ref, f"a reference of {name}")
        up.write(bytes(client.copy))
        client.copy.clear()
        hashes = {a: hashlib.new(a) for a in ("sha256", "sha1", "sha512", "md5")}
        drv = bytearray() if name.endswith(".drv") and method.startswith("text:") else None
        while size := await client.u64():  # framed: u64 size, then the bytes, unpadded
            while size:
                data = await client.exactly(min(size, 1 << 16))
                size -= len(data)
                for h in hashes.values():
                    h.update(data)
                if drv is not None and len(drv) < _MAX_DRV:
                    drv += data
                up.write(bytes(client.copy))
                client.copy.clear()
                await up.drain()
        path = added_path(name, method, {a: h.digest() for a, h in hashes.items()}, refs)
        if drv is not None and len(drv) >= _MAX_DRV:
            raise Refused(f"a derivation of more than {_MAX_DRV} bytes is more than this "
                          "proxy takes")
        await self._added(path, bytes(drv) if drv is not None else None)

    async def _added(self, path: str, text: bytes | None) -> None:
        """``path`` was sent to the daemon, all but the end of the request (a refusal
        here closes the connection before the daemon gets it: nothing is added)."""
        if text is not None and path.endswith(".drv"):
            parsed = readable(path, text)
            await self.view.check_inputs(path, parsed)
            self.view.add_derivation(path, [p for p in parsed.outputs.values() if p])
        else:
            self.view.add(path)


#: SetOptions fields (Nix 2.8's order) the proxy rewrites, by index.
_KEEP_FAILED, _MAX_BUILD_JOBS, _BUILD_CORES = 0, 4, 10
#: Settings a client may send that the daemon applies even for untrusted users and a
#: job may not have: ``build-repeat`` builds everything again, N times.
_DROPPED_SETTINGS = frozenset({"build-repeat", "repeat"})


async def _set_options(client: _Reader, minor: int) -> bytes:
    """Read SetOptions; the request as it goes on, clamped.

    The daemon takes these fields from any client, trusted or not. A job keeps no failed
    build directories on the host (``keep-failed``: a disk filled with them), runs at
    most as many builds at once and gives each at most as many cores as the runner has.
    """
    fields = [await client.u64() for _ in range(12)]  # keepFailed ... useSubstitutes
    cpus = os.cpu_count() or 1
    fields[_KEEP_FAILED] = 0
    fields[_MAX_BUILD_JOBS] = min(fields[_MAX_BUILD_JOBS], cpus)
    fields[_BUILD_CORES] = min(fields[_BUILD_CORES] or cpus, cpus)
    out = b"".join(map(_u64, fields))
    if minor >= 12:
        kept: list[tuple[bytes, bytes]] = []
        count = await client.u64()
        if count > 10_000:
            raise Refused(f"SetOptions with {count} settings is more than this proxy takes")
        for _ in range(count):
            name, value = await client.string(), await client.string()
            if name.decode(errors="replace") not in _DROPPED_SETTINGS:
                kept.append((name, value))
        out += _u64(len(kept)) + b"".join(_string(n) + _string(v) for n, v in kept)
    return out


async def _refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  message: str) -> None:
    """Shake hands as a daemon of protocol 1.26 would, and answer ``message`` as an
    error (a Nix client prints it and stops)."""
    copy = bytearray()
    client = _Reader(reader, copy)
    if await client.u64() != _MAGIC_1:
        return
    writer.write(_u64(_MAGIC_2) + _u64(1 << 8 | 26))
    await writer.drain()
    await client.u64()  # the client's version
    if await client.u64():  # CPU affinity
        await client.u64()
    await client.u64()  # reserveSpace
    writer.write(error_reply(message))
    await writer.drain()


async def _log_message(daemon: _Reader) -> int:
    """Read one of the daemon's messages before an answer (Nix 2.8, protocol 1.26 and
    later); return its kind (its bytes, as read, are in ``daemon.copy``). Refused for
    a kind that no request passed through here is answered with."""
    kind = await daemon.u64()

    async def fields() -> None:
        for _ in range(await daemon.u64()):
            if await daemon.u64() == 0:
                await daemon.u64()
            else:
                await daemon.string()

    if kind in (_STDERR_WRITE, _STDERR_NEXT):
        await daemon.string()
    elif kind == _STDERR_START_ACTIVITY:
        for _ in range(3):  # id, level, type
            await daemon.u64()
        await daemon.string()
        await fields()
        await daemon.u64()  # parent
    elif kind == _STDERR_STOP_ACTIVITY:
        await daemon.u64()
    elif kind == _STDERR_RESULT:
        await daemon.u64()
        await daemon.u64()
        await fields()
    elif kind == _STDERR_ERROR:
        await daemon.string()  # "Error"
        await daemon.u64()  # level
        await daemon.string()  # name
        await daemon.string()  # message
        await daemon.u64()  # position
        for _ in range(await daemon.u64()):  # traces
            await daemon.u64()
            await daemon.string()
    elif kind != _STDERR_LAST:
        raise Refused(f"the daemon sent a message of kind {kind:#x}, unknown to this proxy")
    return kind


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    writer.close()
