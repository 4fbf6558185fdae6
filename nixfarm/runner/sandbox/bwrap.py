"""The bubblewrap sandbox: one long-lived bwrap per job, commands entered with nsenter.

Boot starts ``bwrap --unshare-all`` on the
image root, read-only, with nothing else of the host but the job's Nix closure (each
store path bound read-only at its own path on an otherwise empty /nix/store), a
minimal /dev (null, zero, full, random, urandom, tty; a devpts of its own), a fresh /proc, a
size-limited tmpfs /tmp, and the job's home at /home/build: another size-limited
tmpfs (``spec.home_size``; or a host directory, unlimited, when that is None), and
/var/tmp if the image has one (the same, of its own), the only writable places that
outlive a command: there is no root inside to change anything else of the image (a
VM's root can: its changes go to the job's disk, ``sandbox.vm``). Inside, everything
runs as ``build`` (uid 1000). bwrap's pid 1 reaps; its one child is ``/bin/sh`` waiting on a
pipe from us, so the sandbox ends when we close it, when we die (also
``--die-with-parent``), or when we kill pid 1.

Each ``run`` enters that sandbox's user, mount, pid, ipc, uts and net namespaces with
``nsenter`` (so a daemon started by one task is there for the next, as in a VM) and
execs the command there; its capabilities in the sandbox's user namespace vanish at
that exec, because the build user is not uid 0 there.

Host identity: as root, bwrap and every nsenter run as ``host_uid`` (default nobody)
through ``setpriv --clear-groups --no-new-privs``, so sandboxed processes are an
unprivileged host user even to a kernel bug that lets them out of their namespaces.
The user namespace maps only uid 1000 to that user; there is no root inside. Without
``--dev`` bwrap needs no second, nested user namespace, which is what lets nsenter
join all of the sandbox's namespaces from one user namespace.

A Nix client (``spec.nix_client``): the host's Nix binaries and the shared libraries
they load are bound read-only at their own paths, the job's own socket in front of
the runner's nix-daemon (``runner.nixproxy``: only the job's own store paths) at
/nix/var/nix/daemon-socket/socket, and a small /etc/nix/nix.conf; ``NIX_REMOTE=daemon``.
Those paths cross directories of the image (/usr, /etc, /nix), and a read-only bind
of the image at / leaves no room for new mount points in them. So then / is a
tmpfs instead: each entry of the image is bound (or, for a symlink, recreated) at
its place, except that directories on the way to a client file are made afresh
and their entries bound one level further down, and so on; the new root is
remounted read-only last. Without a Nix client the image is bound at / as before.

Network: the sandbox always has a network namespace of its own. Without network it
holds only a loopback; with network, ``slirp4netns`` (user-mode networking, run by
the runner, ended with the sandbox) adds tap0 with outbound connections only: the
host's loopback is not mapped (``--disable-host-loopback``), so the runner's local
services, and abstract Unix sockets (per network namespace), stay out of reach.
/etc/resolv.conf then names slirp4netns's DNS forwarder. After boot, the sandbox's
user namespace gets ``user.max_user_namespaces = 0``: no nested user namespaces.

Files move in and out by running ``cat``/``tar`` inside (``put``/``get``): the host
never follows a path the job could have pointed at a host file with a symlink.

Limits (see ``limits``) wrap every process we start. Shutdown SIGKILLs pid 1 (the
kernel then kills everything else in the pid namespace), every process group we
started, and whatever is left in the cgroups, then removes the groups and the state
directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import stat
import sys
import tempfile
import time
import uuid
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import IO

from nixfarm.runner.nixproxy import NixProxy, StoreView
from nixfarm.runner.sandbox.base import (
    BUILD_GID,
    BUILD_HOME,
    BUILD_UID,
    BUILD_USER,
    DEFAULT_PATH,
    Lifecycle,
    LineCallback,
    NixClient,
    NoSsh,
    SandboxError,
    SandboxSpec,
    SandboxTimeout,
    copy_out_script,
    disk_full,
    login_shell,
    sizes,
)
from nixfarm.runner.sandbox.limits import CGROUP_ROOT, Confinement, Kind, confine
from nixfarm.runner.sandbox.network import connect_slirp, resolv_conf
from nixfarm.runner.sandbox.processes import (
    Lines,
    OutputPipe,
    feed_stdin,
    kill_group,
    namespace_members,
    read_info,
    remove_tree,
)
from nixfarm.runner.sandbox.terminal import PtyTerminal, Terminal
from nixfarm.runner.shielding import uncancelled

log = logging.getLogger(__name__)
NOBODY = 65534
BOOT_TIMEOUT = 10.0
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
_REQUIRED = ("bin/sh", "etc/passwd", "home/build", "tmp", "proc", "dev")
_IN_DIR = 'cd "$1" || exit 126; shift; exec "$@"'
_PUT = 'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"'
DAEMON_SOCKET = "/nix/var/nix/daemon-socket/socket"
NIX_CONF = "/etc/nix/nix.conf"

# Joins the user namespace $1 (as its owner or root: all capabilities in it) and sets
# its limit of further user namespaces to 0; Python 3.11 has no os.setns.
# Run by the runner's Python in the sandbox's user namespace (where setns gives it
# every capability), then in its mount namespace: no nested user namespaces, and a
# devpts instance of the sandbox's own at /dev/pts (bwrap mounts one only with --dev).
_INSIDE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
def enter(path, kind):
    if libc.setns(os.open(path, os.O_RDONLY), kind) != 0:
        sys.exit("setns: " + os.strerror(ctypes.get_errno()))
enter(sys.argv[1], 0x10000000)
with open("/proc/sys/user/max_user_namespaces", "w") as limit:
    limit.write("0\\n")
enter(sys.argv[2], 0x00020000)
if libc.mount(b"devpts", b"/dev/pts", b"devpts", 0x2 | 0x8,
              b"newinstance,ptmxmode=0666,mode=0620") != 0:
    sys.exit("mounting /dev/pts: " + os.strerror(ctypes.get_errno()))
"""


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SandboxError(f"The bubblewrap sandbox needs {name}, which is not installed.")
    return path


class BwrapSandbox(Lifecycle):
    """A bubblewrap container for one job; see the module docstring."""

    def __init__(
        self,
        spec: SandboxSpec,
        *,
        state_root: Path | None = None,
        host_uid: int | None = None,
        limits: Kind | None = None,
        cgroup_parent: Path | None = None,
    ) -> None:
        self._spec = spec
        self.name = uuid.uuid4().hex[:12]
        self._state_root = state_root
        self._root_runner = os.geteuid() == 0
        self.host_uid = (
            (host_uid if host_uid is not None else NOBODY) if self._root_runner else (os.getuid())
        )
        self._limits_kind = limits
        self._cgroup_parent = cgroup_parent
        self._tools = {t: _tool(t) for t in ("bwrap", "nsenter", "setpriv", "env")}
        self.state_dir: Path | None = None
        self.confinement: Confinement | None = None
        #: The job's Nix socket (with a Nix client): its ``view`` is what the job may use.
        self.nix_proxy: NixProxy | None = None
        self.init_pid = 0  # host pid of the sandbox's pid 1
        self._bwrap: asyncio.subprocess.Process | None = None
        self._running: set[asyncio.subprocess.Process] = set()
        self._slirp: asyncio.subprocess.Process | None = None
        self._deadline: float | None = None
        self._pid_namespace = ""
        self._closed = False
        #: The memory cgroup's OOM kills ``diagnose`` has reported.
        self._oom_kills = 0
        #: Seconds the last boot took (bwrap start to the sandbox's shell answering).
        self.boot_seconds = 0.0

    @property
    def spec(self) -> SandboxSpec:
        return self._spec

    # --- boot ------------------------------------------------------------------

    async def boot(self) -> None:
        if self._bwrap is not None:
            return
        if self._closed:
            raise SandboxError("This sandbox has been shut down.", sandbox=self.name)
        self._check_root()
        started = time.monotonic()
        try:
            await self._start()
        except BaseException:
            await uncancelled(self.shutdown())
            raise
        self.boot_seconds = time.monotonic() - started
        if self._spec.timeout is not None:
            self._deadline = time.monotonic() + self._spec.timeout

    def _check_root(self) -> None:
        root = self._spec.rootfs
        required = list(_REQUIRED) + (["nix/store"] if self._spec.store_paths else [])
        missing = [p for p in required if not os.path.lexists(root / p)]
        if missing:
            raise SandboxError(
                f"Image root {root} lacks {', '.join('/' + m for m in missing)}.",
                sandbox=self.name,
            )
        for path in self._spec.store_paths:
            if not path.startswith("/nix/store/") or "/" in path[len("/nix/store/") :]:
                raise SandboxError(f"{path!r} is not a store path.", sandbox=self.name)
            if not os.path.lexists(path):
                raise SandboxError(f"Store path {path} is not on this host.", sandbox=self.name)

    async def _start(self) -> None:
        self.state_dir = Path(tempfile.mkdtemp(prefix=_PREFIX, dir=self._state_root))
        self.state_dir.chmod(0o711)  # the host uid must reach home/, nothing more
        home = self.state_dir / "home"
        home.mkdir(mode=0o700)
        (self.state_dir / "vartmp").mkdir(mode=0o700)  # /var/tmp if not a tmpfs
        if self._root_runner:
            os.chown(home, self.host_uid, self.host_uid)
            os.chown(self.state_dir / "vartmp", self.host_uid, self.host_uid)
        self.confinement = confine(
            self.name, self._spec, prefer=self._limits_kind, cgroup_parent=self._cgroup_parent
        )
        _write_owner(self.state_dir, self.confinement)
        client = self._spec.nix_client
        if client is not None:
            upstream = client.socket
            if not self._spec.network and client.offline_socket is not None:
                upstream = client.offline_socket
            self.nix_proxy = NixProxy(self.state_dir / "nix.sock", upstream,
                                      StoreView(self._spec.store_paths), job=self.name)
            await self.nix_proxy.start(uid=self.host_uid)
        info_read, info_write = os.pipe()
        args = self._bwrap_args(home, info_write)
        args_file = self.state_dir / "args"
        args_file.write_bytes(b"\0".join(a.encode() for a in args))
        args_fd = os.open(args_file, os.O_RDONLY)
        assert self.confinement is not None
        prefix = self.confinement.prefix()

        async def spawn() -> None:
            # Arguments through a file: pid 1's command line shows no host paths.
            self._bwrap = await asyncio.create_subprocess_exec(
                *prefix, *self._as_host_user(), self._tools["bwrap"],
                "--args", str(args_fd), "--", "/bin/sh", "-c", "echo ready; read _",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(args_fd, info_write),
                env=self._environment(None), start_new_session=True,
            )  # fmt: skip

        try:
            # A cancel while spawning must not leave a bwrap that shutdown cannot see.
            await uncancelled(spawn())
        finally:
            os.close(args_fd)
            os.close(info_write)
        try:
            assert self._bwrap is not None
            assert self._bwrap.stdout is not None and self._bwrap.stderr is not None
            ready = await asyncio.wait_for(self._bwrap.stdout.readline(), BOOT_TIMEOUT)
            if ready != b"ready\n":
                error = (await self._bwrap.stderr.read()).decode(errors="replace").strip()
                raise SandboxError(
                    f"bubblewrap did not start: {error or 'it exited without a word'}"
                    + (f" (can uid {self.host_uid} reach it?)." if "Permission" in error else "."),
                    sandbox=self.name,
                )
            self.init_pid = int((await read_info(info_read))["child-pid"])
            self._pid_namespace = os.readlink(f"/proc/{self.init_pid}/ns/pid")
            await self._inside()
            if self._spec.network:
                await self._connect_network()
        except TimeoutError:
            raise SandboxError(
                f"bubblewrap did not start within {BOOT_TIMEOUT:g} seconds.", sandbox=self.name
            ) from None
        finally:
            os.close(info_read)

    def _bwrap_args(self, home: Path, info_fd: int) -> list[str]:
        spec = self._spec
        args = ["--unshare-all"]  # the network too: with network, slirp4netns connects it
        args += ["--die-with-parent", "--new-session", "--cap-drop", "ALL"]
        args += ["--uid", str(BUILD_UID), "--gid", str(BUILD_GID), "--hostname", "nixfarm"]
        if spec.nix_client is None:
            args += ["--ro-bind", str(spec.rootfs), "/"]
        else:
            args += self._nix_client_args(spec.nix_client)
        args += ["--proc", "/proc", "--tmpfs", "/dev"]
        for device in _DEVICES:
            args += ["--dev-bind", f"/dev/{device}", f"/dev/{device}"]
        for name, target in (
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ):
            args += ["--symlink", target, f"/dev/{name}"]  # fmt: skip
        # devpts is mounted there once bwrap runs (``_inside``).
        args += ["--dir", "/dev/pts", "--symlink", "pts/ptmx", "/dev/ptmx"]
        args += ["--size", str(64 * 1024**2), "--tmpfs", "/dev/shm"]
        args += ["--size", str(spec.tmp_size), "--perms", "1777", "--tmpfs", "/tmp"]
        if spec.home_size is None:
            args += ["--bind", str(home), BUILD_HOME]
        else:  # a quota: the job cannot fill the runner's disk
            args += ["--size", str(spec.home_size), "--perms", "0700", "--tmpfs", BUILD_HOME]
        if self._var_tmp():
            # Writable, as a VM's (on the job's disk there) and gone with the sandbox.
            if spec.home_size is None:
                args += ["--bind", str(home.with_name("vartmp")), "/var/tmp"]
            else:
                args += ["--size", str(spec.home_size), "--perms", "1777", "--tmpfs", "/var/tmp"]
        if spec.store_paths:
            args += ["--tmpfs", "/nix/store"]
            for path in spec.store_paths:
                args += ["--ro-bind", path, path]
            args += ["--remount-ro", "/nix/store"]
        resolv = spec.rootfs / "etc/resolv.conf"
        if spec.network and resolv.is_file() and not resolv.is_symlink():
            assert self.state_dir is not None
            args += ["--ro-bind", str(resolv_conf(self.state_dir)), "/etc/resolv.conf"]
        if spec.nix_client is not None:
            args += ["--remount-ro", "/"]
        args += ["--chdir", BUILD_HOME, "--info-fd", str(info_fd)]
        return args

    def _var_tmp(self) -> bool:
        """Whether the image has a /var/tmp (then writable: ``_bwrap_args``)."""
        var_tmp = self._spec.rootfs / "var/tmp"
        return var_tmp.is_dir() and not var_tmp.is_symlink()

    def _nix_client_args(self, client: NixClient) -> list[str]:
        """The image's entries on a tmpfs root, with the Nix client's files added."""
        assert self.state_dir is not None
        config = self.state_dir / "nix.conf"
        config.write_text(client.config)
        config.chmod(0o644)
        added = {path: ["--ro-bind", path, path] for path in client.files}
        added |= {path: ["--symlink", target, path] for path, target in client.links}
        added[NIX_CONF] = ["--ro-bind", str(config), NIX_CONF]
        assert self.nix_proxy is not None
        added[DAEMON_SOCKET] = ["--bind", str(self.nix_proxy.path), DAEMON_SOCKET]
        args = ["--tmpfs", "/"]
        args += merged(self._spec.rootfs, "", set(added), self.name)
        for path in sorted(added):
            args += added[path]
        return args

    async def _inside(self) -> None:
        """Set user.max_user_namespaces to 0 in the sandbox's user namespace: nothing in
        it may make another (bwrap's --disable-userns would put the sandbox in a nested
        namespace, which nsenter could not then join with the others). And mount a
        private devpts instance at /dev/pts, so that tasks can open ptys (``script``,
        ``expect``, Python's ``pty``): bwrap makes one only with ``--dev``, which would
        cost that nested namespace too."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _INSIDE, f"/proc/{self.init_pid}/ns/user",
            f"/proc/{self.init_pid}/ns/mnt",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        output, _ = await process.communicate()
        if process.returncode != 0:
            raise SandboxError("Cannot set the sandbox up from inside: "
                               f"{output.decode(errors='replace').strip()}", sandbox=self.name)

    async def _connect_network(self) -> None:
        """Outbound-only networking for the sandbox's own namespace (see ``network``)."""
        self._slirp = await connect_slirp(f"/proc/{self.init_pid}/ns/net", self.name,
                                          ready_within=BOOT_TIMEOUT,
                                          setpriv=self._tools["setpriv"])

    def _as_host_user(self) -> list[str]:
        if not self._root_runner:
            return [self._tools["setpriv"], "--no-new-privs"]
        uid = str(self.host_uid)
        return [self._tools["setpriv"], "--reuid", uid, "--regid", uid, "--clear-groups",
                "--no-new-privs"]  # fmt: skip

    def _environment(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        env = {"HOME": BUILD_HOME, "USER": BUILD_USER, "LOGNAME": BUILD_USER,
               "SHELL": "/bin/sh", "PATH": DEFAULT_PATH, "LANG": "C.UTF-8"}  # fmt: skip
        if self._spec.nix_client is not None:
            env["NIX_REMOTE"] = "daemon"
        env.update(self._spec.environment)
        env.update(extra or {})
        return env

    # --- commands --------------------------------------------------------------

    def _enter(self, argv: Sequence[str], cwd: str) -> list[str]:
        if self._bwrap is None or self.confinement is None or self._closed:
            raise SandboxError("The sandbox is not running.", sandbox=self.name)
        inner = list(argv) if cwd == BUILD_HOME else ["/bin/sh", "-c", _IN_DIR, "sh", cwd, *argv]
        namespaces = ["-U", "-m", "-p", "-i", "-u", "-n"]
        # Signals the runner inherited as ignored (a runner started in the background
        # of a shell ignores SIGINT and SIGQUIT) stay ignored across exec: a task's
        # ^C and `trap ... INT` would do nothing. They start at their defaults, as in a
        # container of its own.
        return [*self.confinement.prefix(), *self._as_host_user(), self._tools["env"],
                "--default-signal=INT,QUIT", self._tools["nsenter"],
                "-t", str(self.init_pid), *namespaces,
                "--preserve-credentials", "--root", "--wd", "--", *inner]  # fmt: skip

    def _budget(self, timeout: float | None) -> float | None:
        if self._deadline is None:
            return timeout
        left = max(self._deadline - time.monotonic(), 0.0)
        return left if timeout is None else min(timeout, left)

    async def run(
        self,
        argv: Sequence[str],
        on_line: LineCallback,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str = BUILD_HOME,
        stdin: bytes | Path | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the command must be killed too
    ) -> int:
        budget = self._budget(timeout)
        output = await OutputPipe.open()
        try:
            assert output.write_fd is not None
            process = await self._spawn(self._enter(argv, cwd), env, stdin,
                                        stderr=output.write_fd, stdout=output.write_fd)
        except BaseException:
            output.close()
            raise
        output.given()

        async def ended() -> int:
            await feed_stdin(process, stdin if isinstance(stdin, bytes) else None)
            return await process.wait()

        async def pump() -> int:
            try:
                return await output.read_after(ended(), Lines(on_line), on_line)
            finally:
                output.close()

        return await self._supervise(process, pump(), budget, argv)

    async def shell(self, argv: Sequence[str] | None, rows: int = 24, cols: int = 80,
                    env: Mapping[str, str] | None = None) -> PtyTerminal:
        """``argv`` (None: a login shell) on a pty, in the sandbox (``terminal``)."""
        command = list(argv) if argv else [login_shell(self._spec.rootfs), "-l"]
        environment = {**self._environment(env), "TERM": (env or {}).get("TERM", "xterm")}
        return await PtyTerminal.start(self._enter(command, BUILD_HOME), environment,
                                       rows, cols)

    async def ssh(self, public_key: str) -> tuple[Terminal, str]:
        # Not offered: the image's root (demo/latest, a Nix closure) has no sshd, and
        # the host's would need its libraries and its privilege separation mapped in,
        # as a non-root user in the sandbox's namespaces. ``nixfarm shell`` works here.
        raise NoSsh("it ran in the bwrap sandbox, which has no SSH server",
                    sandbox=self.name)

    async def put(
        self, path: str, data: bytes, *, mode: int = 0o644, owner: int = BUILD_UID
    ) -> None:
        if owner != BUILD_UID:
            raise SandboxError(
                f"Cannot give {path} to uid {owner}: this sandbox maps only the build user.",
                sandbox=self.name,
            )
        output: list[str] = []
        argv = ["/bin/sh", "-c", _PUT, "sh", path, f"{mode:o}"]
        if await self.run(argv, output.append, stdin=data) != 0:
            raise SandboxError(
                f"Cannot write {path} in the sandbox: {' '.join(output) or 'unknown error'}.",
                sandbox=self.name,
            )

    async def get(self, path: str, dest: Path, *, limit: int | None = None) -> int:
        partial = dest.with_name(dest.name + ".part")
        error = bytearray()
        script = copy_out_script(limit)
        with partial.open("wb") as out:
            process = await self._spawn(
                self._enter(["/bin/sh", "-c", script, "sh", path], BUILD_HOME), None, None,
                asyncio.subprocess.PIPE, stdout=out.fileno(),
            )  # fmt: skip

            async def pump() -> int:
                assert process.stderr is not None
                # All of it is read (a full pipe would stall tar), the start is kept.
                while chunk := await process.stderr.read(65536):
                    error.extend(chunk[: max(0, 4096 - len(error))])
                return await process.wait()

            status = await self._supervise(process, pump(), self._budget(None), ["get", path])
            size = os.fstat(out.fileno()).st_size
        if status != 0:
            partial.unlink()
            raise SandboxError(
                f"Cannot copy {path} out of the sandbox: "
                f"{error.decode(errors='replace').strip() or 'no such file'}.",
                sandbox=self.name,
            )
        partial.rename(dest)
        return size

    async def _spawn(
        self,
        argv: list[str],
        env: Mapping[str, str] | None,
        stdin: bytes | Path | None,
        stderr: int,
        stdout: int = asyncio.subprocess.PIPE,
    ) -> asyncio.subprocess.Process:
        with contextlib.ExitStack() as stack:
            source: int | IO[bytes] = asyncio.subprocess.DEVNULL
            if isinstance(stdin, Path):  # a host file: the command reads it directly
                source = stack.enter_context(stdin.open("rb"))
            elif stdin is not None:
                source = asyncio.subprocess.PIPE
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=source, stdout=stdout, stderr=stderr, env=self._environment(env),
                start_new_session=True,  # one process group: killed as one
            )  # fmt: skip
        self._running.add(process)
        return process

    async def _supervise(
        self,
        process: asyncio.subprocess.Process,
        work: Coroutine[object, object, int],
        budget: float | None,
        argv: Sequence[str],
    ) -> int:
        try:
            status = await asyncio.wait_for(work, budget)
        except TimeoutError:
            kill_group(process)
            await uncancelled(_drain(process))
            raise SandboxTimeout(
                f"{' '.join(argv)[:200]} did not finish within {budget:g} seconds.",
                sandbox=self.name,
                seconds=budget or 0.0,
            ) from None
        except BaseException:  # cancelled, or a line callback said stop: the command goes
            kill_group(process)
            await uncancelled(_drain(process))
            raise
        finally:
            await uncancelled(process.wait())
            self._running.discard(process)
        return status

    async def diagnose(self) -> list[str]:
        """The home's tmpfs full (seen through pid 1's root), and processes the memory
        cgroup killed since the last call."""
        found: list[str] = []
        places = [(BUILD_HOME, "its home")]
        if self._var_tmp():
            places.append(("/var/tmp", "its /var/tmp"))
        for place, what in places:
            if not self.init_pid or self._closed:
                break
            try:
                usage = await asyncio.to_thread(os.statvfs,
                                                f"/proc/{self.init_pid}/root{place}")
            except OSError:
                continue
            full = disk_full(self._spec.home_size, usage.f_bavail * usage.f_frsize, what)
            found += [full] if full else []
        if self.confinement is not None:
            killed = await asyncio.to_thread(self.confinement.oom_kills)
            if killed > self._oom_kills:
                limit = sizes(self._spec.memory_limit or 0)
                found.append(f"out of memory: {killed - self._oom_kills} process(es) killed "
                             f"at the job's memory limit of {limit}")
                self._oom_kills = killed
        return found

    # --- shutdown --------------------------------------------------------------

    async def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Signals first, synchronously: they are sent even if we are cancelled here.
        # bwrap's outer process reaps pid 1 and exits by itself; it is killed only if
        # it lingers, so that pid 1 does not become an orphan zombie for the host.
        if self.init_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init_pid, signal.SIGKILL)
        for process in self._running:
            kill_group(process)
        if self._slirp is not None:
            kill_group(self._slirp)
        if self.confinement is not None:
            self.confinement.kill()
        await uncancelled(self._reap())

    async def _reap(self) -> None:
        # The state (the job's home, secrets included) goes whatever else fails.
        try:
            if self._bwrap is not None:
                try:
                    await asyncio.wait_for(self._bwrap.wait(), 5.0)
                except TimeoutError:
                    kill_group(self._bwrap)
                    await self._bwrap.wait()
            for process in [*self._running, *([self._slirp] if self._slirp else [])]:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), 5.0)
            # Without cgroups, the pid namespace is how we know everyone is gone.
            deadline = time.monotonic() + 5.0
            while self._pid_namespace and (left := namespace_members(self._pid_namespace)):
                if time.monotonic() > deadline:
                    raise SandboxError(f"Processes {sorted(left)} outlived the sandbox.", self.name)
                for pid in left:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                await asyncio.sleep(0.01)
            if self.nix_proxy is not None:
                await self.nix_proxy.stop()
            if self.confinement is not None:
                await asyncio.to_thread(self.confinement.remove)
        finally:
            if self.state_dir is not None:
                await asyncio.to_thread(remove_tree, self.state_dir)


async def _drain(process: asyncio.subprocess.Process, seconds: float = 5.0) -> None:
    """Read a killed command's pipes to their end: asyncio's ``wait()`` returns only once
    they are closed, and a full pipe nobody reads any more is never seen to close."""
    async def drain(stream: asyncio.StreamReader | None) -> None:
        while stream is not None and await stream.read(1 << 16):
            pass

    with contextlib.suppress(TimeoutError, ConnectionError):
        await asyncio.wait_for(asyncio.gather(drain(process.stdout), drain(process.stderr)),
                               seconds)


OWNER = "owner.json"
_PREFIX = "nixfarm-sandbox-"


def _started(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot), or "" if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _write_owner(state_dir: Path, confinement: Confinement) -> None:
    """Who owns the sandbox: a runner started after this one was killed reaps it."""
    (state_dir / OWNER).write_text(json.dumps({
        "pid": os.getpid(), "started": _started(os.getpid()), "kind": confinement.kind,
        "groups": [str(g) for g in confinement.groups]}))


def sweep(state_root: Path | None = None) -> list[Path]:
    """Remove what sandboxes of runners that are gone left (``state_root``: where they
    were made, the temporary directory by default): their processes, cgroups and
    state directories, the build user's home with the job's secrets among them.

    A sandbox whose runner still runs (the same pid, started at the same time) is
    left alone, so runners sharing a host do not reap each other. Returns the state
    directories removed.
    """
    removed = []
    root = state_root or Path(tempfile.gettempdir())
    for state_dir in sorted(root.glob(_PREFIX + "*")):
        try:
            if not _ours(state_dir):  # (what is in it is then ours too)
                continue  # another user's: the temporary directory is everyone's
            owner = json.loads((state_dir / OWNER).read_text())
            pid, started = int(owner["pid"]), str(owner["started"])
            groups = [Path(g) for g in owner.get("groups", [])]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being made right now, or not ours to judge
        if _started(pid) == started:
            continue
        if not all(_is_sandbox_group(g) for g in groups):
            log.warning("not sweeping %s: its groups are not sandboxes' cgroups", state_dir)
            continue
        confinement = Confinement(owner.get("kind", "rlimit"), groups=groups)
        confinement.kill()
        with contextlib.suppress(SandboxError):
            confinement.remove()
        remove_tree(state_dir)
        removed.append(state_dir)
    return removed


def _ours(path: Path) -> bool:
    """Whether ``path`` was made by this user and no one else may change it: what a
    sweep as root trusts must not be something a local user put in /tmp."""
    info = path.lstat()
    return info.st_uid == os.geteuid() and not info.st_mode & 0o022 \
        and not stat.S_ISLNK(info.st_mode)


def _is_sandbox_group(group: Path) -> bool:
    """Whether ``group`` can be a sandbox's cgroup (``limits`` makes ``nixfarm-*`` groups
    under /sys/fs/cgroup): never a system service's group to kill."""
    return group.is_absolute() and ".." not in group.parts \
        and group.is_relative_to(CGROUP_ROOT) and group.name.startswith("nixfarm-")


def merged(root: Path, directory: str, added: set[str], name: str,
            prefix: str = "", source: Path | None = None) -> list[str]:
    """bwrap arguments showing ``root/directory``'s entries at ``/directory``, except
    that the directories on the way to an ``added`` path are made fresh (on the tmpfs
    root) and filled entry by entry, and ``added`` paths themselves are left out.
    ``prefix``: where that root is in bwrap's tree (a VM's virtiofsd: /export/root);
    ``source``: where bwrap finds ``root``'s entries, if elsewhere (``vm.idmap``)."""
    args: list[str] = []
    for entry in sorted(os.listdir(root / directory.lstrip("/") if directory else root)):
        path = f"{directory}/{entry}"
        if path in added:
            continue
        host = root / path.lstrip("/")
        crossed = any(a.startswith(path + "/") for a in added)
        if host.is_symlink():
            if crossed:
                raise SandboxError(f"The image's {path} is a symlink: cannot add the Nix "
                                   "client's files under it.", sandbox=name)
            args += ["--symlink", os.readlink(host), prefix + path]
        elif crossed and host.is_dir():
            args += ["--dir", prefix + path, *merged(root, path, added, name, prefix, source)]
        else:
            args += ["--ro-bind", str((source or root) / path.lstrip("/")), prefix + path]
    return args
