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
is made of: the image root, the Nix store paths it may read, its limits and network.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from nixfarm.errors import NixfarmError

BUILD_USER = "build"
BUILD_UID = 1000
BUILD_GID = 1000
BUILD_HOME = "/home/build"
DEFAULT_PATH = f"{BUILD_HOME}/.nixfarm/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"

#: Called with each line of a command's output (stdout and stderr merged), no newline.
LineCallback = Callable[[str], None]


@dataclass
class SandboxError(NixfarmError):
    """The sandbox could not be set up, or a verb failed for a reason of its own."""

    sandbox: str = ""


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
    paths. The store inside stays the job's closure: what the daemon builds is not
    visible.
    """

    socket: Path
    files: tuple[str, ...] = ()
    links: tuple[tuple[str, str], ...] = ()
    config: str = ""
    #: The daemon for jobs without network: it runs in a network namespace of its own,
    #: so their fixed-output derivations cannot reach anything. None: ``socket``.
    offline_socket: Path | None = None


@dataclass(frozen=True)
class SandboxSpec:
    """What a sandbox is made of. Limits of ``None`` mean "not limited"."""

    #: The image's root directory, mounted read-only as ``/``. It must hold
    #: /bin/sh, /etc/passwd (with the build user), /home/build, /tmp, /proc and /dev,
    #: and /nix/store when ``store_paths`` is not empty.
    rootfs: Path
    #: Store paths bind-mounted read-only at their own path; nothing else of the
    #: host's store is visible. Give a whole closure (see ``nix.command.query_closure``).
    store_paths: Sequence[str] = ()
    network: bool = False
    #: Bytes of memory for all processes together.
    memory_limit: int | None = 2 * 1024**3
    #: CPUs (fractions allowed): a share of CPU time per period.
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

    async def get(self, path: str, dest: Path) -> int:
        """Copy ``path`` out to the host file ``dest``; return the bytes written.

        A directory comes out as a tar archive of its contents. It is read with the
        build user's rights and view, so symlinks inside cannot reach host files.
        Streams; raises SandboxError when ``path`` is missing or unreadable.
        """

    async def shutdown(self) -> None:
        """Kill every process in the sandbox and remove all its state. Idempotent."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
