"""The sandbox a job runs in, reached through a few narrow verbs.

Like the builds.sr.ht worker's image control (``boot``, ``sanity_check``, ssh for the
rest), the runner's steps never touch a sandbox's namespaces, cgroups or files
directly; they ask it to:

    boot()                      start it (idempotent: a second call does nothing)
    run(argv, on_line) -> int   run a command as the build user, stream its output
    put(path, data, mode)       write a file inside (secrets, task scripts)
    get(path, dest) -> int      copy a file (or a directory, as a tar archive) out
    shutdown()                  kill every process and remove every trace

A ``Sandbox`` is also an async context manager: ``async with`` boots it and always
shuts it down, even when the caller is cancelled. ``SandboxSpec`` says what a sandbox
is made of: its image, its limits and network.

An image is one of three kinds, and each sandbox says which it runs:

    RootDir(path)                  a directory that is ``/``          bwrap, vm
    NixClosure(root, store_paths)  a root of links into /nix/store,   bwrap, vm
                                   and exactly the closure they need
    DiskImage(path, format)        a bootable disk (raw or qcow2)     vm only

Every kind is shown read-only; what a job writes goes to a scratch layer that is
dropped with the sandbox.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, Protocol, Self

from nixfarm.errors import NixfarmError
from nixfarm.runner.sandbox.terminal import Terminal
from nixfarm.runner.shielding import uncancelled

BUILD_USER = "build"
BUILD_UID = 1000
BUILD_GID = 1000
BUILD_HOME = "/home/build"
DEFAULT_PATH = f"{BUILD_HOME}/.nixfarm/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"

def login_shell(root: Path) -> str:
    """The build user's shell in an image's /etc/passwd (/bin/sh when it names none
    or one the image lacks)."""
    try:
        for line in (root / "etc/passwd").read_text(errors="replace").splitlines():
            fields = line.split(":")
            if (len(fields) >= 7 and fields[0] == BUILD_USER and fields[6].startswith("/")
                    and os.path.lexists(root / fields[6].lstrip("/"))):
                return fields[6]
    except OSError:
        pass
    return "/bin/sh"


#: Called with each line of a command's output (stdout and stderr merged), no newline.
LineCallback = Callable[[str], None]


@dataclass
class SandboxError(NixfarmError):
    """The sandbox could not be set up, or a verb failed for a reason of its own."""

    sandbox: str = ""


@dataclass
class NoSsh(SandboxError):
    """``Sandbox.ssh``: the sandbox has no SSH server (the bwrap sandbox, an image
    without sshd). Its message says why, as a clause ("image X has no sshd")."""


@dataclass
class SandboxTimeout(SandboxError):
    """A command (or the sandbox's whole time budget) ran out of time; it was killed."""

    seconds: float = 0.0


@dataclass(frozen=True)
class NixClient:
    """A Nix client for the sandbox: the host's binaries, talking to a host nix-daemon.

    Each file is bound read-only at its own path; ``links`` are symlinks
    (path, target) such as /usr/bin/nix-build -> nix; the daemon's ``socket`` appears
    at /nix/var/nix/daemon-socket/socket and ``config`` as /etc/nix/nix.conf, through
    a proxy of the job's own (``runner.nixproxy``) that lets it use only its own
    paths. In bwrap the store inside stays the job's closure: what the daemon builds
    is not visible; a VM shows its guest the proxy's whole view (``vm.nixguest``).
    """

    socket: Path
    files: tuple[str, ...] = ()
    links: tuple[tuple[str, str], ...] = ()
    config: str = ""
    #: The daemon for jobs without network: it runs in a network namespace of its own,
    #: so their fixed-output derivations cannot reach anything. None: ``socket``.
    offline_socket: Path | None = None


@dataclass(frozen=True)
class RootDir:
    """An image that is a directory: it must hold /bin/sh, /etc/passwd (with the
    build user), /home/build, /tmp, /proc and /dev."""

    path: Path


@dataclass(frozen=True)
class NixClosure:
    """An image made of Nix store paths: ``root`` is a small tree of links into
    /nix/store (see ``nixroot``, which also needs /nix/store), and ``store_paths``
    the whole closure it needs; nothing else of the host's store is shown."""

    root: Path
    store_paths: tuple[str, ...]


@dataclass(frozen=True)
class DiskImage:
    """A disk whose first file system (or first partition's) is the root: only a
    virtual machine can run it. The job never writes into the file."""

    path: Path
    format: Literal["raw", "qcow2"] = "qcow2"


Image = RootDir | NixClosure | DiskImage


@dataclass(frozen=True, init=False)
class SandboxSpec:
    """What a sandbox is made of. Limits of ``None`` mean "not limited".

    Give ``image``; or, as a shorthand for a directory image, ``rootfs`` (with
    ``store_paths``, a ``NixClosure``).
    """

    image: Image
    network: bool = False
    #: Bytes of memory for all processes together (a VM's RAM).
    memory_limit: int | None = 2 * 1024**3
    #: CPUs (fractions allowed): a share of CPU time per period; a VM gets this
    #: many virtual CPUs, rounded up.
    cpu_limit: float | None = None
    #: Processes (threads count) alive at once in the sandbox.
    process_limit: int | None = 512
    #: Bytes of the in-memory /tmp.
    tmp_size: int = 512 * 1024**2
    #: Bytes of the build user's home, an in-memory file system too (None: a host
    #: directory, not limited). Both count against ``memory_limit`` as they fill.
    home_size: int | None = 1024**3
    #: Environment of every command (over HOME, USER, PATH, ... which it may replace).
    environment: Mapping[str, str] = field(default_factory=dict)
    #: Seconds the sandbox may live after boot: commands still running then are killed.
    timeout: float | None = None
    #: A Nix client (``NIX_REMOTE=daemon``) for tasks; None: no Nix inside.
    nix_client: NixClient | None = None

    def __init__(
        self,
        image: Image | None = None,
        *,
        rootfs: Path | None = None,
        store_paths: Sequence[str] = (),
        network: bool = False,
        memory_limit: int | None = 2 * 1024**3,
        cpu_limit: float | None = None,
        process_limit: int | None = 512,
        tmp_size: int = 512 * 1024**2,
        home_size: int | None = 1024**3,
        environment: Mapping[str, str] | None = None,
        timeout: float | None = None,
        nix_client: NixClient | None = None,
    ) -> None:
        if image is None:
            if rootfs is None:
                raise SandboxError("A sandbox needs an image (or a root directory).")
            image = NixClosure(rootfs, tuple(store_paths)) if store_paths else RootDir(rootfs)
        elif rootfs is not None or store_paths:
            raise SandboxError("Give a sandbox an image or a root directory, not both.")
        values = {"image": image, "network": network, "memory_limit": memory_limit,
                  "cpu_limit": cpu_limit, "process_limit": process_limit,
                  "tmp_size": tmp_size, "home_size": home_size,
                  "environment": dict(environment or {}),
                  "timeout": timeout, "nix_client": nix_client}  # fmt: skip
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @property
    def rootfs(self) -> Path:
        """The root directory of a directory image (RootDir, NixClosure)."""
        if isinstance(self.image, DiskImage):
            raise SandboxError(
                f"{self.image.path} is a disk image: only a virtual machine can run it."
            )
        return self.image.path if isinstance(self.image, RootDir) else self.image.root

    @property
    def store_paths(self) -> tuple[str, ...]:
        """The store paths a NixClosure shows at /nix/store (none for other images)."""
        return self.image.store_paths if isinstance(self.image, NixClosure) else ()


class Sandbox(Protocol):
    """An isolated place to run a job's commands as the unprivileged build user."""

    @property
    def spec(self) -> SandboxSpec: ...

    async def boot(self) -> None:
        """Start the sandbox; raises SandboxError saying why it cannot. Idempotent."""

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
        """Run ``argv`` inside as the build user; return its exit status.

        Output lines (stdout and stderr together, in order) go to ``on_line`` as they
        are printed. ``stdin`` is bytes, or a host file streamed in. ``env`` is laid
        over the spec's environment. A command still running after ``timeout``
        seconds (or past the spec's deadline) is killed with everything it started
        and SandboxTimeout is raised; a cancelled caller kills it the same way.
        When it ends by itself, what it left in the background lives on until
        shutdown (like a daemon started by one task for the next); ``run`` returns
        once its output is closed.
        """

    async def put(
        self, path: str, data: bytes, *, mode: int = 0o644, owner: int = BUILD_UID
    ) -> None:
        """Write ``data`` to ``path`` inside (parents created), then set ``mode``.

        Not idempotent in effect on content: it replaces the file.
        """

    async def get(self, path: str, dest: Path, *, limit: int | None = None) -> int:
        """Copy ``path`` out to the host file ``dest``; return the bytes written.

        A directory comes out as a tar archive of its contents. It is read with the
        build user's rights and view, so symlinks inside cannot reach host files.
        Only a regular file or a directory is copied (never a device or a pipe). With
        ``limit``, at most ``limit + 1`` bytes are copied, so a caller sees a copy that
        is too large without the host's disk paying for it. Streams; raises
        SandboxError when ``path`` is missing or unreadable.
        """

    async def shell(self, argv: Sequence[str] | None, rows: int = 24, cols: int = 80,
                    env: Mapping[str, str] | None = None) -> Terminal:
        """``argv`` (None: the build user's login shell) on a pseudo-terminal inside, as
        the build user, for ``nixfarm shell`` (see ``terminal``). Not limited by the
        spec's deadline: the caller ends it."""

    async def ssh(self, public_key: str) -> tuple[Terminal, str]:
        """A connection to an SSH server inside that lets ``public_key`` (one OpenSSH
        public key line) in as the build user, for ``nixfarm ssh``: the connection's
        bytes as a ``Terminal`` (``resize`` does nothing; its end is the server's),
        and the server's public host key (``ssh-ed25519 AAAA...``), made for this
        sandbox, the same for each session into it. The server starts on demand, here,
        never at boot. ``NoSsh`` when the sandbox has none."""

    async def shutdown(self) -> None:
        """Kill every process in the sandbox and remove all its state. Idempotent."""

    async def diagnose(self) -> list[str]:
        """The limits the sandbox has reached, each as a sentence for the job's log: its
        disk full (``home_size``), a process killed for memory since the last call
        (``memory_limit``). Empty when none. Asked after a command failed, since a
        command that hits a limit often says only ENOSPC or "Killed"."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class Lifecycle:
    """``async with`` for a sandbox: boot on entry, shut down on exit whatever happened
    (cancelled or not)."""

    async def boot(self) -> None:
        raise NotImplementedError

    async def shutdown(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.boot()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await uncancelled(self.shutdown())


def disk_full(size: int | None, free: int, what: str) -> str | None:
    """The job-log sentence for a disk of ``size`` bytes holding ``what`` with ``free``
    left, when it is full (None when it is not, or has no limit)."""
    if size is None or free > max(size // 100, 64 * 1024):
        return None
    return f"the job's disk is full: {what} is limited to {sizes(size)} (jobs.home_bytes)"


def sizes(n: int) -> str:
    """``n`` bytes for people: "32 MiB", "1 GiB", "1000 bytes"."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"


def copy_out_script(limit: int | None) -> str:
    """The ``sh -c`` script ``get`` runs as the build user, with the path as ``$1``.

    A file is read with ``head -c`` when there is a limit: a link to /dev/zero or a
    file still growing cannot fill the host. A directory's tar is checked with ``du``
    first instead, so that tar's own exit status still says whether it all came out.
    """
    if limit is None:
        file, directory = 'exec cat -- "$1"', "exec tar -cf - ."
    else:
        file = f'exec head -c {limit + 1} -- "$1"'
        directory = (f'[ "$(du -sk . | cut -f1)" -le {limit // 1024 + 1} ] || '
                     f'{{ echo "$1 holds more than {limit} bytes" >&2; exit 1; }}; '
                     "exec tar -cf - .")
    return (f'if [ -d "$1" ]; then cd "$1" && {directory}; '
            f'elif [ -f "$1" ]; then {file}; '
            'elif [ -e "$1" ]; then echo "$1 is not a regular file or a directory" >&2; exit 1; '
            'else echo "$1: no such file or directory" >&2; exit 1; fi')
