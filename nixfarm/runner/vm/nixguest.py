"""Nix inside a job's VM, with bwrap's guarantees: the job's own proxy, the job's own view.

A VM job of a Nix image gets what a bwrap job gets (``sandbox.bwrap``, ``nixd``):
the host's Nix client talking to a socket of its own, a ``NixProxy`` in front of the
runner's nix-daemon that lets it use only the paths of its *view*. Three parts:

    client  the host's Nix binaries and libraries, /etc/nix/nix.conf, and a Python to
            run the relay, bound at their own paths into the image's tree that
            virtiofsd exports (``root_args``: the image's entries on a tmpfs, as bwrap
            merges them), with an empty /nix/var/nix/daemon-socket for the guest;
            a root runner's through idmapped mounts (``vm.idmap``), as the image's.
    socket  no vsock here: in the guest, ``guest/nixrelay.py`` listens on
            /nix/var/nix/daemon-socket/socket and carries every connection made to it,
            multiplexed, over the virtio-serial port ``nixfarm.nix``; ``NixPort``, on
            this side, opens one connection to the proxy per guest connection (the
            proxy then counts and limits them as it does for bwrap).
    store   the guest's /nix/store shows the view, and nothing else, read-only. It is
            a tmpfs of ours in a mount namespace of its own (``StoreMounts``), holding
            one read-only bind mount per path of the view; virtiofsd is started in
            that namespace, and mount propagation brings it every path bound later.
            A path is bound once it is in the view and valid: the image's closure at
            boot, then whatever the proxy's ``settle`` hook finds after each request
            that adds or builds, before the client hears it is done (so ``nix-build``
            returns with ``result`` readable). A path outside the view is never
            bound: in the guest it does not exist.

The mount namespace dies with its last process (the holder, virtiofsd): nothing of it
is left on the host for ``reap`` to undo, however the runner ends. Only a root
runner has Nix for jobs (``nixd.NOT_ROOT``), and only root can do this.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from nixfarm.errors import NixfarmError
from nixfarm.runner.nixproxy import MAX_CONNECTIONS, NixProxy, StoreView, invalid_paths
from nixfarm.runner.sandbox.base import NixClient, SandboxError, SandboxSpec

log = logging.getLogger("nixfarm.runner.vm.nixguest")

DAEMON_SOCKET_DIR = "/nix/var/nix/daemon-socket"
NIX_CONF = "/etc/nix/nix.conf"
PORT_NAME = "nixfarm.nix"
#: Where virtiofsd shows the relay (``nix/`` of the share, in the guest under
#: /run/nixfarm/private/share: see ``guest/agent``).
RELAY = Path(__file__).resolve().parent / "guest" / "nixrelay.py"
_HEADER = struct.Struct("<II")
#: The largest frame either side sends (the relay's too: ``guest/nixrelay.py``).
_FRAME = 65536
_STORE_PATH = re.compile(r"/nix/store/[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+\-._?=]+")

# The holder of the store's mount namespace: a tmpfs at $1, shared (virtiofsd's
# namespace, made from this one, receives what is mounted under it), then one
# read-only bind per store path read from stdin, answering "ok" or what failed.
_HOLDER = r"""
mount -t tmpfs -o mode=0755,size=8m nixfarm-store "$1" || exit 1
mount --make-shared "$1" || exit 1
echo ready
while read -r path; do
  target="$1/${path##*/}"
  if [ -L "$path" ]; then
    error=$(ln -s "$(readlink "$path")" "$target" 2>&1)
  elif [ -d "$path" ]; then
    error=$(mkdir "$target" 2>&1 && mount --bind -o ro "$path" "$target" 2>&1)
  else
    error=$(touch "$target" 2>&1 && mount --bind -o ro "$path" "$target" 2>&1)
  fi
  if [ $? = 0 ]; then echo ok; else echo "failed: $error" | tr '\n' ' '; echo; fi
done
"""


@functools.cache
def python() -> tuple[str, str]:
    """A Python for the guest's relay: (its binary, its standard library directory).

    The system's python3 rather than the runner's own: a runner's virtualenv or pyenv
    (under /root) is out of virtiofsd's reach, which runs as an unprivileged user.
    """
    found = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    if found is None:
        raise SandboxError("Nix in a VM needs python3 on the runner (for the guest's "
                           "relay to the Nix daemon), and there is none.")
    binary = os.path.realpath(found)
    done = subprocess.run([binary, "-I", "-S", "-c", "import os; print(os.path.dirname("
                           "os.__file__))"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SandboxError(f"{binary} does not run: {done.stderr.strip()}")
    return binary, done.stdout.strip()


@functools.cache
def libraries(binary: str) -> tuple[str, ...]:
    """The shared libraries ``ldd`` lists for ``binary``, the dynamic loader included."""
    from nixfarm.runner.libraries import shared_libraries

    try:
        return tuple(shared_libraries([binary]))
    except NixfarmError as e:
        raise SandboxError(e.message) from e


def root_args(spec: SandboxSpec, store: Path, config: Path, name: str,
              source: Path | None = None,
              host: Callable[[str], str] = str) -> list[str]:
    """virtiofsd's bwrap options for /export/root with the Nix client (see the module
    docstring): the image's entries (found at ``source``, if given), the client's files
    (each found at ``host(path)``), ``store`` at /nix/store. A root runner finds the
    image and the host's files through idmapped mounts (``vm.idmap``): the guest's
    root is an overlay, which opens them as virtiofsd may only open its own files."""
    from nixfarm.runner.sandbox.bwrap import merged

    client = spec.nix_client
    assert client is not None
    binary, stdlib = python()
    files = dict.fromkeys([*client.files, binary, *libraries(binary)])
    # Each option's last argument is its destination in the guest's tree.
    added: dict[str, list[list[str]]] = {path: [["--ro-bind", host(path), path]]
                                         for path in files}
    added |= {path: [["--symlink", target, path]] for path, target in client.links}
    added[stdlib] = [["--ro-bind", host(stdlib), stdlib]]
    if os.path.isdir(os.path.join(stdlib, "site-packages")):
        # The runner's own packages are none of the guest's business.
        added[stdlib].append(["--tmpfs", os.path.join(stdlib, "site-packages")])
    added[NIX_CONF] = [["--ro-bind", host(str(config)), NIX_CONF]]
    added["/nix/store"] = [["--ro-bind", str(store), "/nix/store"]]
    added[DAEMON_SOCKET_DIR] = [["--dir", DAEMON_SOCKET_DIR]]
    args = ["--tmpfs", "/export/root",
            *merged(spec.rootfs, "", set(added), name, "/export/root", source)]
    # Directories on the way that the image lacks (bwrap would make them 0700).
    parents = {str(parent) for path in added for parent in Path(path).parents}
    for parent in sorted(parents - {"/"}, key=lambda p: p.count("/")):
        if not os.path.lexists(spec.rootfs / parent.lstrip("/")):
            args += ["--perms", "0755", "--dir", "/export/root" + parent]
    for path in sorted(added):
        for *option, destination in added[path]:
            args += [*option, "/export/root" + destination]
    return [*args, "--remount-ro", "/export/root"]


class StoreMounts:
    """The guest's /nix/store: a tmpfs at ``path`` in a mount namespace of its own,
    one read-only bind per path (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.bound: set[str] = set()
        self._holder: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    @property
    def namespace(self) -> str:
        """The mount namespace, for ``nsenter --mount=`` (virtiofsd starts in it)."""
        assert self._holder is not None
        return f"/proc/{self._holder.pid}/ns/mnt"

    async def start(self) -> None:
        if os.geteuid() != 0:
            raise SandboxError("Nix in a VM needs a root runner (its store view is made of "
                               "bind mounts).")
        self.path.mkdir(mode=0o755, exist_ok=True)
        self._holder = await asyncio.create_subprocess_exec(
            "unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _HOLDER,
            "sh", str(self.path), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True)  # fmt: skip
        assert self._holder.stdout is not None
        ready = await self._holder.stdout.readline()
        if ready != b"ready\n":
            rest = await self._holder.stdout.read()
            raise SandboxError("Cannot make the VM's store view: "
                               f"{(ready + rest).decode(errors='replace').strip()}")

    async def bind(self, paths: Sequence[str]) -> None:
        """Bind each of ``paths`` (valid store paths) into the store. Idempotent."""
        async with self._lock:
            holder = self._holder
            assert holder is not None and holder.stdin is not None and holder.stdout is not None
            for path in paths:
                if path in self.bound:
                    continue
                if not _STORE_PATH.fullmatch(path):
                    raise SandboxError(f"{path!r} is not a store path.")
                holder.stdin.write(path.encode() + b"\n")
                answer = (await holder.stdout.readline()).decode(errors="replace").strip()
                if answer != "ok":
                    raise SandboxError(f"Cannot show {path} in the VM: {answer or 'no answer'}")
                self.bound.add(path)

    async def settle(self, view: StoreView) -> None:
        """Bind the paths of ``view`` that are valid now and not bound yet. A failure
        is logged, not raised: the client still gets the daemon's answer."""
        try:
            await self._settle(view)
        except SandboxError as e:
            log.warning("cannot show new store paths in a VM: %s", e.message)

    async def _settle(self, view: StoreView) -> None:
        for output in list(view.pending):
            await view.sees(output)  # outputs of derivations the daemon has registered
        unbound = [p for p in view.paths if p not in self.bound]
        candidates = await asyncio.to_thread(lambda: [p for p in unbound if os.path.lexists(p)])
        if not candidates:
            return
        # Only valid paths: one being built (or left invalid) may still be replaced,
        # and a bind would keep showing what it replaced.
        invalid = await invalid_paths(candidates)
        await self.bind([p for p in candidates if p not in invalid])

    async def stop(self) -> None:
        """End the holder: the namespace, and every bind in it, go with its last
        process. Idempotent."""
        holder, self._holder = self._holder, None
        if holder is None or holder.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            holder.kill()
        await holder.wait()


class NixPort:
    """The host's end of the guest's ``nixfarm.nix`` port: one connection to the
    proxy at ``proxy`` per connection the guest's relay carries (``guest/nixrelay.py``)."""

    def __init__(self, port: socket.socket, proxy: Path, name: str) -> None:
        self._port = port
        self._proxy = proxy
        self._name = name
        self._links: dict[int, asyncio.StreamWriter] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._writer: asyncio.StreamWriter | None = None
        self._serving: asyncio.Task[None] | None = None

    async def open(self) -> None:
        reader, self._writer = await asyncio.open_connection(sock=self._port)
        self._serving = asyncio.create_task(self._serve(reader))

    def _send(self, conn: int, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(_HEADER.pack(conn, len(data)) + data)

    async def _serve(self, reader: asyncio.StreamReader) -> None:
        """Frames from the guest, whose root may write anything on the port: a frame
        too large ends the port (what it would say is not buffered first), and a
        connection past the proxy's own bound is closed before it is opened."""
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                conn, size = _HEADER.unpack(await reader.readexactly(_HEADER.size))
                if size > _FRAME:
                    log.warning("vm %s: a frame of %d bytes on the Nix port: closing it",
                                self._name, size)
                    break
                data = await reader.readexactly(size) if size else b""
                link = self._links.get(conn)
                if not size:
                    if link is not None:
                        link.close()
                    continue
                if link is None and len(self._links) >= 2 * MAX_CONNECTIONS:
                    self._send(conn, b"")
                    continue
                if link is None:
                    try:
                        back, link = await asyncio.open_unix_connection(str(self._proxy))
                    except OSError as e:
                        log.warning("vm %s: no Nix proxy: %s", self._name, e)
                        self._send(conn, b"")
                        continue
                    self._links[conn] = link
                    task = asyncio.create_task(self._back(conn, back, link))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                link.write(data)
                # (One connection's stall holds the others: the proxy reads at once.)
                with contextlib.suppress(ConnectionError):
                    await link.drain()
        # The guest is gone or broke the protocol: so is the port (its relay's clients
        # fail, as they would with the daemon gone).
        assert self._writer is not None
        self._writer.close()

    async def _back(self, conn: int, reader: asyncio.StreamReader,
                    link: asyncio.StreamWriter) -> None:
        assert self._writer is not None
        try:
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(_FRAME):
                    self._send(conn, data)
                    await self._writer.drain()
        finally:
            if self._links.get(conn) is link:
                del self._links[conn]
            link.close()
            with contextlib.suppress(ConnectionError, RuntimeError):
                self._send(conn, b"")

    async def close(self) -> None:
        """Close every connection and the port. Idempotent."""
        for task in [*self._tasks, *([self._serving] if self._serving else [])]:
            task.cancel()
        for task in [*self._tasks, *([self._serving] if self._serving else [])]:
            with contextlib.suppress(BaseException):
                await task
        self._serving = None
        for link in self._links.values():
            link.close()
        self._links.clear()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._port.close()


class NixGuest:
    """Everything of one VM's Nix on the host: its proxy, store view and port."""

    def __init__(self, spec: SandboxSpec, state_dir: Path, name: str,
                 source: Path | None = None) -> None:
        client = spec.nix_client
        assert client is not None
        self.client: NixClient = client
        self.spec = spec
        self.state_dir = state_dir
        self.name = name
        self.store = StoreMounts(state_dir / "store")
        self.proxy: NixProxy | None = None
        self.port: NixPort | None = None
        self._guest_fd = -1  # the guest's end of the port, until qemu's spawn takes it
        self._root: list[str] = []
        self._source = source  # the image's tree as virtiofsd finds it (``vm.idmap``)
        #: The host's files shown to virtiofsd idmapped: (path, where it finds it).
        self.idmapped: list[tuple[Path, Path]] = []

    async def start(self, network: bool) -> None:
        """Start the proxy and the store view (before virtiofsd, which needs both)."""
        upstream = self.client.socket
        if not network and self.client.offline_socket is not None:
            upstream = self.client.offline_socket
        view = StoreView(self.spec.store_paths)
        self.proxy = NixProxy(self.state_dir / "nix.sock", upstream, view, job=self.name,
                              settle=lambda: self.store.settle(view))
        await self.proxy.start(uid=None)
        self.proxy.path.chmod(0o600)  # the runner's own: only NixPort connects
        await self.store.start()
        await self.store.bind(self.spec.store_paths)
        relay = self.state_dir / "nix"
        relay.mkdir(mode=0o755)
        binary, _ = await asyncio.to_thread(python)
        shutil.copyfile(RELAY, relay / "nixrelay.py")
        (relay / "start").write_text(
            f'exec {binary} -I -S /run/nixfarm/private/share/nix/nixrelay.py "$@" '
            "2>/dev/console\n")
        for file in relay.iterdir():
            file.chmod(0o644)
        config = self.state_dir / "nix.conf"
        config.write_text(self.client.config)
        config.chmod(0o644)
        self._root = await asyncio.to_thread(
            root_args, self.spec, self.store.path, config, self.name, self._source,
            self._idmapped if self._source is not None else str)
        host_end, guest_end = socket.socketpair()
        self._guest_fd = guest_end.detach()
        self.port = NixPort(host_end, self.proxy.path, self.name)

    def _idmapped(self, path: str) -> str:
        """Where virtiofsd finds the host's ``path``: a mount point of ours, on which
        ``vm.idmap`` mounts it (a file's or a directory's, as ``path`` is)."""
        where = self.state_dir / "host"
        where.mkdir(mode=0o755, exist_ok=True)
        target = where / str(len(self.idmapped))
        if os.path.isdir(path):
            target.mkdir(mode=0o755)
        else:
            target.touch(mode=0o644)
        self.idmapped.append((Path(path), target))
        return str(target)

    def take_guest_fd(self) -> int:
        """The guest's end of the port, for qemu: the caller closes it."""
        fd, self._guest_fd = self._guest_fd, -1
        assert fd >= 0
        return fd

    def virtiofsd_args(self) -> list[str]:
        """bwrap options for /export/root and /export/nix (see ``root_args``)."""
        return [*self._root, "--ro-bind", str(self.state_dir / "nix"), "/export/nix"]

    def enter(self) -> list[str]:
        """The command prefix that starts virtiofsd in the store's mount namespace."""
        return ["nsenter", f"--mount={self.store.namespace}", "--"]

    async def stop(self) -> None:
        """Stop all of it. Idempotent."""
        if self.port is not None:
            await self.port.close()
        if self._guest_fd >= 0:
            os.close(self._guest_fd)
            self._guest_fd = -1
        if self.proxy is not None:
            await self.proxy.stop()
        await self.store.stop()
