"""Nix for jobs: a nix-daemon on the host, and a Nix client for the sandbox.

A job that runs ``nix-build`` needs a store it can add to and a builder that is not
itself. It gets neither from the sandbox: the sandbox's /nix/store is a read-only
view of the job's closure. Instead the runner keeps one nix-daemon for all its jobs,
and the sandbox gets a Nix client (``NixClient``: the host's Nix binaries, exactly
the shared libraries ``ldd`` says they load, and the daemon's socket). The client
evaluates inside the sandbox, with the build user's view of files; the daemon adds
what it is given to the host's store and builds in Nix's own sandbox, as one of the
``nixbld`` users (Nix's default when the daemon is root), on behalf of a client
that is just "nobody": the sandbox's host uid is not a trusted user, so it cannot
turn the Nix sandbox off, add unsigned paths or pick its own substituters.

The daemon: if one already answers on the system socket and the sandbox's host
user can reach it, it is used as it is configured. Otherwise the runner starts its
own ``nix-daemon`` on a private socket in its work directory, with the sandbox on
(``sandbox-fallback = false``: no silent unsandboxed builds) and the runner's Nix
options (``substituters``, ...); ``setpriv --pdeathsig`` ends it with the runner,
however the runner ends.

What the client cannot do: read store paths it was not given (the results of its
own builds included: they live in the host's store, outside the sandbox). The
runner reads those, for ``cache push``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import socket
import stat
import struct
import subprocess
from collections.abc import Mapping
from pathlib import Path

from nixfarm.errors import NixfarmError
from nixfarm.runner.sandbox.base import NixClient

log = logging.getLogger("nixfarm.runner.nixd")

SYSTEM_SOCKET = Path("/nix/var/nix/daemon-socket/socket")
START_TIMEOUT = 10.0
_WORKER_MAGIC_1 = 0x6E697863
_WORKER_MAGIC_2 = 0x6478696F
_NSS_MODULES = ("libnss_files.so.2", "libnss_dns.so.2")
_LDD_LINE = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)")
#: The client's nix.conf: nothing the daemon would refuse from an untrusted user
#: (every setting in it is sent along, and refused ones only print warnings).
CLIENT_CONFIG = "# The job's Nix client; the runner's nix-daemon decides the rest.\n"


def answers(path: Path, timeout: float = 2.0) -> bool:
    """Whether a Nix daemon answers on the socket ``path`` (the protocol's handshake)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            sock.sendall(struct.pack("<Q", _WORKER_MAGIC_1))
            reply = sock.recv(8)
        except OSError:
            return False
    return len(reply) == 8 and struct.unpack("<Q", reply)[0] == _WORKER_MAGIC_2


def reachable_by_others(path: Path) -> bool:
    """Whether any user may connect to the socket ``path`` (as the sandbox's may)."""
    try:
        if not path.stat().st_mode & stat.S_IWOTH:
            return False
        return all(p.stat().st_mode & stat.S_IXOTH for p in path.parents)
    except OSError:
        return False


def client_files(nix: str = "nix") -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The host's Nix client: (files to bind, symlinks) for ``NixClient``.

    The binary, the libraries ``ldd`` lists (with the dynamic loader) at the paths it
    lists them, and every ``nix-*`` link next to the binary that points at it.
    """
    found = shutil.which(nix)
    if found is None:
        raise NixfarmError("Nix is not installed on this runner (no nix on the PATH).")
    binary = os.path.realpath(found)
    done = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NixfarmError(f"ldd {binary} failed: {done.stderr.strip()}")
    libraries = [m.group(1) for m in map(_LDD_LINE.search, done.stdout.splitlines()) if m]
    # Nix preloads glibc's name service modules at start (it warns without them).
    for library in list(libraries):
        if os.path.basename(library) == "libc.so.6":
            for module in _NSS_MODULES:
                candidate = os.path.join(os.path.dirname(library), module)
                if os.path.exists(candidate):
                    libraries.append(candidate)
    directory = os.path.dirname(binary)
    links = []
    for name in sorted(os.listdir(directory)):
        link = os.path.join(directory, name)
        if (name.startswith("nix-") and os.path.islink(link)
                and os.path.realpath(link) == binary):
            links.append((link, os.readlink(link)))
    return (binary, *dict.fromkeys(libraries)), tuple(links)


class NixDaemon:
    """The runner's nix-daemon (see the module docstring); ``client()`` for sandboxes."""

    def __init__(self, state_dir: Path, options: Mapping[str, str] | None = None,
                 *, system_socket: Path = SYSTEM_SOCKET) -> None:
        self.state_dir = state_dir
        self.options = dict(options or {})
        self.system_socket = system_socket
        self.socket: Path | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._client: NixClient | None = None

    @property
    def pid(self) -> int | None:
        """The pid of the daemon we started, if it runs."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    async def start(self) -> NixClient:
        """Find or start the daemon; raises NixfarmError saying why it cannot."""
        if self._client is not None:
            if self._process is None or self._process.returncode is None:
                return self._client
            log.warning("nix-daemon exited with %d; starting another", self._process.returncode)
            self._process = None
        files, links = await asyncio.to_thread(client_files)
        if await asyncio.to_thread(self._system_usable):
            self.socket = self.system_socket
            log.info("using the nix-daemon on %s", self.socket)
        else:
            self.socket = await self._spawn()
        self._client = NixClient(socket=self.socket, files=files, links=links,
                                 config=CLIENT_CONFIG)
        return self._client

    def _system_usable(self) -> bool:
        return reachable_by_others(self.system_socket) and answers(self.system_socket)

    async def _spawn(self) -> Path:
        if os.geteuid() != 0:
            raise NixfarmError("Only a root runner can start a nix-daemon for jobs, and no "
                               f"daemon usable by jobs answers on {self.system_socket}.")
        daemon = shutil.which("nix-daemon")
        if daemon is None:
            raise NixfarmError("nix-daemon is not installed on this runner.")
        directory = self.state_dir / "nix-daemon"
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o755)  # the sandbox's host user must reach the socket
        path = directory / "socket"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        # The runner's options come first: nothing in them may turn Nix's sandbox off.
        options = {**self.options, "sandbox": "true", "sandbox-fallback": "false"}
        args = [a for key, value in options.items() for a in ("--option", key, value)]
        log_file = (directory / "daemon.log").open("ab")
        try:
            self._process = await asyncio.create_subprocess_exec(
                "setpriv", "--pdeathsig", "KILL", "--", daemon, *args,
                stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                env={**os.environ, "NIX_DAEMON_SOCKET_PATH": str(path)},
                # Not in a terminal's foreground group: a Ctrl-C to the runner is for
                # the runner to handle (its jobs' grace), not for the daemon to die of.
                process_group=0)
        finally:
            log_file.close()
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT
        while not (path.exists() and await asyncio.to_thread(answers, path)):
            if self._process.returncode is not None or (
                    asyncio.get_running_loop().time() > deadline):
                await self.stop()
                tail = (directory / "daemon.log").read_text(errors="replace")[-500:].strip()
                raise NixfarmError(f"nix-daemon did not start on {path}: {tail or 'no word'}")
            await asyncio.sleep(0.05)
        log.info("started nix-daemon (pid %d) on %s", self._process.pid, path)
        return path

    async def stop(self) -> None:
        """Stop the daemon we started (a system one is left alone). Idempotent."""
        process, self._process = self._process, None
        self._client = None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 5.0)
        except TimeoutError:
            process.kill()
            await process.wait()
