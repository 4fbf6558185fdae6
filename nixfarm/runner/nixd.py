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

The daemons: a root runner starts two ``nix-daemon``s of its own, on private
sockets in its work directory, with the sandbox on (``sandbox-fallback = false``: no
silent unsandboxed builds), the runner's Nix options (``substituters``, ...) and
``trusted-users`` empty; ``setpriv --pdeathsig`` ends them with the runner, however
the runner ends. Nix builds a fixed-output derivation with its daemon's network, so
each daemon has the network of the jobs it serves. The one for jobs with network
runs in a network namespace of its own behind ``slirp4netns
--disable-host-loopback``, as those jobs do (``sandbox.network``): outbound
connections, nothing on the runner's loopback, and DNS through slirp's forwarder
(its own mount namespace names it in /etc/resolv.conf, which Nix copies into the
builds). The other runs in a network namespace with only a loopback, for jobs
without network: they get none there either. The farm's own caches among the
substituters reach both daemons through the runner (``cacherelay``), whatever
network they have; the daemon without network substitutes from nothing else. A
runner that is not root gives jobs no Nix (``NOT_ROOT``): the system's daemon would build
their fixed-output derivations with the host's network and may trust the runner's
user, which the proxy connects as.

Jobs never reach a daemon directly: each sandbox gets a socket of its own, a proxy
(``nixproxy``) that lets the job use only its own store paths (its closure, what it
added, what its derivations build) and refuses garbage collection, deleting paths,
listing the store or its roots. What the client cannot do in a bwrap sandbox: read
store paths from the disk (the results of its own builds included: they live in the
host's store, outside the sandbox); it can dump its own with ``nix-store --dump``.
A VM's guest reads every path of its view, its builds' included (``vm.nixguest``).
The runner reads them, for ``cache push``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

from nixfarm.errors import NixfarmError
from nixfarm.runner.cacherelay import CacheRelay, relayed
from nixfarm.runner.libraries import shared_libraries
from nixfarm.runner.sandbox.base import NixClient
from nixfarm.runner.sandbox.network import connect_slirp, resolv_conf

log = logging.getLogger("nixfarm.runner.nixd")

START_TIMEOUT = 10.0
_WORKER_MAGIC_1 = 0x6E697863
_WORKER_MAGIC_2 = 0x6478696F
#: Why a runner that is not root gives jobs no Nix (and ``nixfarm runner`` refuses to
#: start as one unless told --no-nix-daemon).
NOT_ROOT = ("A runner that is not root cannot give jobs a Nix of their own: only root can "
            "start the nix-daemons that build as the nixbld users with the job's network "
            "(none for jobs without network), and the system's daemon would build their "
            "fixed-output derivations with the host's network and may trust the runner's "
            "user. Run the runner as root, or with --no-nix-daemon (then `image: nix` jobs "
            "run without Nix and `cache:` jobs are refused).")
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


def client_files(nix: str = "nix") -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The host's Nix client: (files to bind, symlinks) for ``NixClient``.

    The binary, the libraries ``ldd`` lists (with the dynamic loader) at the paths it
    lists them, and every ``nix-*`` link next to the binary that points at it.
    """
    found = shutil.which(nix)
    if found is None:
        raise NixfarmError("Nix is not installed on this runner (no nix on the PATH).")
    binary = os.path.realpath(found)
    libraries = shared_libraries([binary])  # glibc's NSS modules too: Nix preloads them
    directory = os.path.dirname(binary)
    links = []
    for name in sorted(os.listdir(directory)):
        link = os.path.join(directory, name)
        if (name.startswith("nix-") and os.path.islink(link)
                and os.path.realpath(link) == binary):
            links.append((link, os.readlink(link)))
    return (binary, *libraries), tuple(links)


class NixDaemon:
    """The runner's nix-daemons (see the module docstring); ``client()`` for sandboxes."""

    def __init__(self, state_dir: Path, options: Mapping[str, str] | None = None,
                 farm_urls: Sequence[str] = ()) -> None:
        """``farm_urls``: where this runner reaches its farm, the first used, the others
        the farm's other names (its ``base_url``): substituters under them are the
        farm's caches, which both daemons get through the runner (``cacherelay``)."""
        self.state_dir = state_dir
        self.options = dict(options or {})
        self.farm_urls = tuple(farm_urls)
        self._relay: CacheRelay | None = None
        self.socket: Path | None = None
        #: The daemon of jobs without network (in a network namespace of its own).
        self.offline_socket: Path | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._offline: asyncio.subprocess.Process | None = None
        #: The slirp4netns of the daemon for jobs with network.
        self._slirp: asyncio.subprocess.Process | None = None
        self._client: NixClient | None = None

    @property
    def pid(self) -> int | None:
        """The pid of the daemon we started (for jobs with network), if it runs."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    @property
    def offline_pid(self) -> int | None:
        """The pid of the daemon we started for jobs without network, if it runs."""
        process = self._offline
        return process.pid if process is not None and process.returncode is None else None

    def _running(self) -> bool:
        return all(p is None or p.returncode is None
                   for p in (self._process, self._offline, self._slirp))

    async def start(self) -> NixClient:
        """Find or start the daemons; raises NixfarmError saying why it cannot."""
        if self._client is not None:
            if self._running():
                return self._client
            log.warning("a nix-daemon of the runner exited; starting them again")
            await self.stop()
        if os.geteuid() != 0:
            raise NixfarmError(NOT_ROOT)
        files, links = await asyncio.to_thread(client_files)
        # Daemons of our own, each with the network of its jobs (their fixed-output
        # derivations are built with the daemon's): outbound only through slirp4netns
        # for jobs with network, none for the others (which then cannot substitute
        # over the network either).
        # The farm's caches among the substituters are relayed into both (``cacherelay``).
        online, offline, caches = dict(self.options), dict(self.options), set()
        for key in ("substituters", "extra-substituters"):
            every, farms, names = relayed(self.options.get(key, ""), self.farm_urls)
            if key in self.options:
                online[key] = every
            offline[key] = farms
            caches |= names
        try:
            if caches:
                self._relay = CacheRelay(self.farm_urls[0], caches)
            self._process, self.socket = await self._spawn("nix-daemon", online, True)
            self._offline, self.offline_socket = await self._spawn(
                "nix-daemon-offline", offline, False)
        except BaseException:
            await self.stop()
            raise
        self._client = NixClient(socket=self.socket, files=files, links=links,
                                 config=CLIENT_CONFIG, offline_socket=self.offline_socket)
        return self._client

    async def _spawn(self, name: str, options: Mapping[str, str], network: bool
                     ) -> tuple[asyncio.subprocess.Process, Path]:
        daemon = shutil.which("nix-daemon")
        if daemon is None:
            raise NixfarmError("nix-daemon is not installed on this runner.")
        directory = self.state_dir / name
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)  # only the runner's proxies connect (``nixproxy``)
        path = directory / "socket"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        # The runner's options come first: nothing in them may turn Nix's sandbox off,
        # and the daemon trusts no one: its only client, the runner's proxy, is root.
        options = {**options, "sandbox": "true", "sandbox-fallback": "false",
                   "trusted-users": ""}
        args = [a for key, value in options.items() for a in ("--option", key, value)]
        netns = ["unshare", "--net", "--"]
        if network:
            # Its own mount namespace, where /etc/resolv.conf names slirp's DNS
            # forwarder (the host's may name a resolver on its loopback, out of reach).
            resolv = resolv_conf(directory)
            netns = ["unshare", "--net", "--mount", "--", "sh", "-c",
                     'mount --bind "$0" /etc/resolv.conf || :; exec "$@"', str(resolv)]
        log_file = (directory / "daemon.log").open("ab")
        try:
            process = await asyncio.create_subprocess_exec(
                "setpriv", "--pdeathsig", "KILL", "--", *netns, daemon, *args,
                stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                env={**os.environ, "NIX_DAEMON_SOCKET_PATH": str(path)},
                # Not in a terminal's foreground group: a Ctrl-C to the runner is for
                # the runner to handle (its jobs' grace), not for the daemon to die of.
                process_group=0)
        finally:
            log_file.close()
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT
        while not (path.exists() and await asyncio.to_thread(answers, path)):
            if process.returncode is not None or (
                    asyncio.get_running_loop().time() > deadline):
                await _end(process)
                tail = (directory / "daemon.log").read_text(errors="replace")[-500:].strip()
                raise NixfarmError(f"nix-daemon did not start on {path}: {tail or 'no word'}")
            await asyncio.sleep(0.05)
        try:
            if network:
                self._slirp = await connect_slirp(f"/proc/{process.pid}/ns/net", name,
                                                  ready_within=START_TIMEOUT)
            if self._relay is not None:
                await self._relay.listen_in(process.pid)
        except BaseException:
            await _end(process)
            raise
        log.info("started %s (pid %d) on %s", name, process.pid, path)
        return process, path

    async def stop(self) -> None:
        """Stop the daemons we started. Idempotent."""
        processes = (self._process, self._offline, self._slirp)
        self._process = self._offline = self._slirp = None
        self._client = None
        relay, self._relay = self._relay, None
        if relay is not None:
            await relay.close()
        for process in processes:
            if process is not None:
                await _end(process)


async def _end(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    process.terminate()
    try:
        await asyncio.wait_for(process.wait(), 5.0)
    except TimeoutError:
        process.kill()
        await process.wait()
