"""The VM sandbox: each job in its own qemu ``microvm``, reached through a guest agent.

    boot      kernel + our initramfs (``vm.kernel``), accelerator (``vm.accel``),
              virtiofsd and qemu each in bubblewrap as an unprivileged user
              (``vm.qemu``); the guest lays an overlay on the job's disk over
              the read-only image (``vm.idmap``), becomes the agent and says ``ready``
    run       the command as a script in xfer/, started by the agent as ``build``;
              output streams back over a virtio-serial port (``vm.channel``)
    put/get   runs of ``cat``/``tar`` in the guest, with data through xfer/
    shutdown  SIGKILL to both process groups, then the state directory goes: the
              guest's writes were only ever in its RAM or on the job's disk there
              (``vm.disk``, a file of the job's quota)

The host never opens a path inside the guest's tree: what ``get`` copies out is
read from xfer/ with O_NOFOLLOW and must be a regular file. A runner killed with
SIGKILL takes its VMs with it (``--die-with-parent``); ``reap`` removes the state
directories such a runner left, at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from nixfarm.runner.nixproxy import NixProxy
from nixfarm.runner.sandbox.base import (
    BUILD_HOME,
    BUILD_UID,
    BUILD_USER,
    DEFAULT_PATH,
    DiskImage,
    Lifecycle,
    LineCallback,
    NoSsh,
    SandboxError,
    SandboxSpec,
    SandboxTimeout,
    copy_out_script,
    disk_full,
    login_shell,
    sizes,
)
from nixfarm.runner.sandbox.network import connect_slirp, resolv_conf
from nixfarm.runner.sandbox.processes import (
    Lines,
    alive,
    descendants,
    kill_group,
    read_info,
    remove_tree,
)
from nixfarm.runner.shielding import uncancelled
from nixfarm.runner.vm import disk as job_disk
from nixfarm.runner.vm import idmap, qemu, sshd, telnet
from nixfarm.runner.vm.accel import Accelerator, probe
from nixfarm.runner.vm.channel import AgentChannel
from nixfarm.runner.vm.kernel import BootFiles, KernelError, boot_files
from nixfarm.runner.vm.nixguest import NixGuest
from nixfarm.runner.vm.telnet import TelnetTerminal

log = logging.getLogger("nixfarm.runner.sandbox.vm")

NOBODY = 65534
#: slirp4netns's DNS forwarder, in the network namespace qemu runs in.
#: Seconds from qemu's start to the agent's ``ready`` (TCG on a busy machine is slow).
BOOT_TIMEOUT = 120.0
#: Boots tried when bubblewrap fails before the guest starts (``_bwrap_loopback_failed``).
BOOT_ATTEMPTS = 2
STATE_PREFIX = "nixfarm-vm-"
#: Shell sessions (``nixfarm shell``) a VM holds at once: a virtio-serial port each.
SHELL_PORTS = 2
#: Seconds a new session waits for a port that an ended one has yet to give back.
SHELL_PORT_WAIT = 15.0
#: What an image's root must hold: a shell, the build user, its home's mount point.
_REQUIRED = ("bin/sh", "etc/passwd", "home/build", "tmp", "dev")
#: Two programs (cat, chmod) when the directory exists: each exec costs under TCG.
#: Busybox's (static, quick to start), not the image's: a Nix image may have no cat.
_PUT = ('B=/run/nixfarm/busybox; case $1 in */*) d=${1%/*} ;; *) d=. ;; esac; '
        '{ [ -d "${d:-/}" ] || $B mkdir -p "$d"; } && $B cat > "$1" && $B chmod "$2" "$1"')
#: The guest kernel's line (on its console, at error level) when its OOM killer acts.
_OOM_KILL = re.compile(rb"Out of memory: Killed process (\d+) \(([^)\n]*)\)")


class VmSandbox(Lifecycle):
    """A qemu microVM for one job; see the module docstring."""

    def __init__(
        self,
        spec: SandboxSpec,
        *,
        vm_dir: Path,
        state_root: Path | None = None,
        host_uid: int | None = None,
        accelerator: Accelerator | None = None,
    ) -> None:
        self._spec = spec
        self.name = uuid.uuid4().hex[:12]
        self._vm_dir = vm_dir
        self._state_root = state_root
        self._root_runner = os.geteuid() == 0
        self.host_uid = (host_uid if host_uid is not None else NOBODY) if self._root_runner \
            else os.getuid()
        self.accelerator = accelerator
        self.state_dir: Path | None = None
        self._processes: list[asyncio.subprocess.Process] = []
        self._channel: AgentChannel | None = None
        self._shell_ports: list[socket.socket] = []
        self._free_shells: set[int] = set()
        self._ssh_setup = asyncio.Lock()  # one at a time: the first makes the host key
        self._deadline: float | None = None
        self._closed = False
        self._booted = False
        #: Seconds the last boot took (qemu start to the agent's ``ready``).
        self.boot_seconds = 0.0
        #: Seconds from the boot's start to each of its phases on the host (the job's
        #: disk made, virtiofsd and qemu started, the agent ready): ``bench/vm_bench.py``.
        self.phases: dict[str, float] = {}
        self._boot_started = 0.0
        #: The niceness its processes start with: a pool's VMs boot at a low priority,
        #: not to slow the jobs running (``vmpool``); ``hand_over`` sets it back to 0.
        self.nice = 0
        self.boot_files: BootFiles | None = None
        #: Nix for the guest (``spec.nix_client``; see ``vm.nixguest``).
        self.nix: NixGuest | None = None
        #: How much of the console's log ``diagnose`` has read.
        self._console_seen = 0

    @property
    def spec(self) -> SandboxSpec:
        return self._spec

    @property
    def description(self) -> str:
        """How it runs, for the job's log: "a VM (kvm), booted in 0.9 s"."""
        accel = self.accelerator.describe() if self.accelerator else "not probed yet"
        return (f"a VM ({accel}), booted in {self.boot_seconds:.1f} s "
                f"({self.guest_seconds:.1f} s of them in the guest)")

    @property
    def nix_proxy(self) -> NixProxy | None:
        """The job's Nix socket, whose ``view`` is what the job may use (as bwrap's)."""
        return self.nix.proxy if self.nix is not None else None

    def _phase(self, name: str) -> None:
        self.phases[name] = time.monotonic() - self._boot_started

    @property
    def cpu_seconds(self) -> float:
        """CPU time its qemu and virtiofsd have used so far (user and system): what its
        boot costs whatever else loads the machine (``bench/vm_bench.py``)."""
        total = 0
        tick = os.sysconf("SC_CLK_TCK")
        for pid in set().union(*(descendants(p.pid) | {p.pid} for p in self._processes)):
            with contextlib.suppress(OSError, ValueError, IndexError):
                # The fields after the command's name (which may hold spaces).
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / tick

    @property
    def guest_phases(self) -> dict[str, float]:
        """The guest's uptime at each phase of its init, and at ``ready`` (``guest/init``)."""
        if self._channel is None:
            return {}
        return {**self._channel.guest_phases, "ready": self._channel.guest_uptime}

    @property
    def guest_seconds(self) -> float:
        """The guest's uptime when its agent was ready: kernel and init, by its clock."""
        return self._channel.guest_uptime if self._channel else 0.0

    # --- boot ------------------------------------------------------------------

    async def boot(self) -> None:
        if self._booted:
            return
        if self._closed:
            raise SandboxError("This sandbox has been shut down.", sandbox=self.name)
        for tool in ("bwrap", "setpriv", qemu.QEMU):
            if shutil.which(tool) is None:
                raise SandboxError(f"The vm sandbox needs {tool}, which is not installed.",
                                   sandbox=self.name)
        if not os.access(qemu.VIRTIOFSD, os.X_OK):
            raise SandboxError(f"The vm sandbox needs {qemu.VIRTIOFSD} (qemu-system-x86).",
                               sandbox=self.name)
        await asyncio.to_thread(self._check_image)
        try:
            self.boot_files = await boot_files(self._vm_dir)
        except KernelError as e:
            raise SandboxError(f"No guest kernel: {e.message}", sandbox=self.name) from e
        if self.accelerator is None:
            self.accelerator = await probe()
        started = self._boot_started = time.monotonic()
        for attempt in range(1, BOOT_ATTEMPTS + 1):
            try:
                await self._start(self.boot_files, self.accelerator)
                break
            except SandboxError as e:
                if attempt == BOOT_ATTEMPTS or not self._bwrap_loopback_failed():
                    await uncancelled(self.shutdown())
                    raise
                log.warning("VM %s: bubblewrap could not set its loopback up (%s); "
                            "booting again", self.name, e.message)
                await uncancelled(self._stop())
                self._forget_attempt()
            except BaseException:
                await uncancelled(self.shutdown())
                raise
        self._booted = True
        self.boot_seconds = time.monotonic() - started
        if self._spec.timeout is not None:
            self._deadline = time.monotonic() + self._spec.timeout

    def usable(self) -> bool:
        """Booted, not shut down, and its qemu and virtiofsd still running."""
        return (self._booted and not self._closed
                and all(p.returncode is None for p in self._processes))

    def hand_over(self, spec: SandboxSpec) -> None:
        """Give this booted, unused VM to a job (``vmpool``): ``spec`` must be the one it
        booted with but for what applies per command or from now on (environment,
        timeout), so the job gets the VM it asked for. Its deadline starts now."""
        if spec.timeout is not None:
            self._deadline = time.monotonic() + spec.timeout
        self._spec = spec
        if self.nice:
            self.nice = 0
            # Niceness is per thread: each of qemu's and virtiofsd's. Lowering it needs
            # privilege: a runner that is not root leaves its pool's VMs nice.
            for pid in set().union(*(descendants(p.pid) | {p.pid} for p in self._processes)):
                with contextlib.suppress(OSError):
                    for thread in os.listdir(f"/proc/{pid}/task"):
                        with contextlib.suppress(OSError):
                            os.setpriority(os.PRIO_PROCESS, int(thread), 0)

    def _check_image(self) -> None:
        """What the guest's init and agent need of the image, said before booting."""
        image = self._spec.image
        if isinstance(image, DiskImage):
            if not image.path.is_file():
                raise SandboxError(f"There is no disk image {image.path}.", sandbox=self.name)
            return
        root = self._spec.rootfs
        missing = [p for p in _REQUIRED if not os.path.lexists(root / p)]
        if missing:
            raise SandboxError(f"Image root {root} lacks {', '.join('/' + m for m in missing)}.",
                               sandbox=self.name)
        for path in self._spec.store_paths:
            if not path.startswith("/nix/store/") or "/" in path[len("/nix/store/") :]:
                raise SandboxError(f"{path!r} is not a store path.", sandbox=self.name)
            if not os.path.lexists(path):
                raise SandboxError(f"Store path {path} is not on this host.", sandbox=self.name)

    async def _start(self, boot: BootFiles, accel: Accelerator) -> None:
        self.state_dir = Path(tempfile.mkdtemp(prefix=STATE_PREFIX, dir=self._state_root))
        self.state_dir.chmod(0o711)
        xfer = self.state_dir / "xfer"
        xfer.mkdir(mode=0o700)
        if self._root_runner:
            os.chown(xfer, self.host_uid, self.host_uid)
        log = (self.state_dir / "console.log").open("wb")
        host_control, guest_control = socket.socketpair()
        host_output, guest_output = socket.socketpair()
        shell_pairs = [socket.socketpair() for _ in range(SHELL_PORTS)]
        self._shell_ports = [host for host, _ in shell_pairs]
        self._free_shells = set(range(SHELL_PORTS))
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        vfs_client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        opened: list[int] = []
        try:
            # virtiofsd accepts on a listening socket; qemu gets the connection made
            # to it already, so neither needs the other's path.
            address = str(self.state_dir / "vfs.sock")
            listener.bind(address)
            listener.listen(1)
            vfs_client.connect(address)
            os.unlink(address)
            scratch = await job_disk.make(
                self.state_dir / "disk.img", self._spec.home_size,
                self.host_uid if self._root_runner else None, self.name)
            self._phase("disk")
            opened = [os.open(boot.kernel, os.O_RDONLY), os.open(boot.initrd, os.O_RDONLY),
                      os.open(scratch, os.O_RDWR | os.O_NOFOLLOW)]
            if isinstance(self._spec.image, DiskImage):
                opened.append(os.open(self._spec.image.path, os.O_RDONLY))
            fds = qemu.Fds(kernel=opened[0], initrd=opened[1], virtiofs=vfs_client.fileno(),
                           control=guest_control.fileno(), output=guest_output.fileno(),
                           scratch=opened[2], disk=opened[3] if len(opened) > 3 else None,
                           shells=tuple(guest.fileno() for _, guest in shell_pairs))  # fmt: skip
            source = self._image_source()
            nix = await self._start_nix(source)
            enter = nix.enter() if nix else []
            if source is not None:
                enter += idmap.command(self.host_uid, [(self._spec.rootfs, source),
                                                       *(nix.idmapped if nix else [])])
            if nix is not None:
                opened.append(nix.take_guest_fd())  # qemu's, closed here with the rest
                fds = dataclasses.replace(fds, nix=opened[-1])
            await self._spawn(
                [*qemu.virtiofsd_bwrap(self._spec, xfer, nix.virtiofsd_args() if nix else (),
                                       source),
                 "--", *qemu.virtiofsd_args(listener.fileno())],
                (listener.fileno(),), log, enter=enter)
            self._phase("virtiofsd")
            info_read, info_write = os.pipe()
            opened += [info_read, info_write]
            await self._spawn(
                [*qemu.bwrap(extra=[*self._kvm_device(accel), *self._resolver(),
                                    "--info-fd", str(info_write)]),
                 "--", *qemu.qemu_args(self._spec, accel, fds, qemu.host_tsc_khz())],
                (*opened, vfs_client.fileno(), guest_control.fileno(), guest_output.fileno(),
                 *(guest.fileno() for _, guest in shell_pairs)),
                log, groups=self._kvm_groups(accel))  # fmt: skip
            self._phase("qemu")
            os.close(info_write)
            opened.remove(info_write)
            if self._spec.network:
                qemu_pid = int((await read_info(info_read))["child-pid"])
                self._processes.append(await connect_slirp(
                    f"/proc/{qemu_pid}/ns/net", self.name, ready_within=BOOT_TIMEOUT))
        finally:
            log.close()
            for fd in opened:
                os.close(fd)
            for sock in (listener, vfs_client, guest_control, guest_output,
                         *(guest for _, guest in shell_pairs)):
                sock.close()
        if self.nix is not None and self.nix.port is not None:
            await self.nix.port.open()
        self._channel = AgentChannel(host_control, host_output, self.name)
        await self._channel.open()
        try:
            async with asyncio.timeout(BOOT_TIMEOUT):
                await self._channel.ready()
            self._phase("ready")
        except (TimeoutError, SandboxError) as e:
            why = str(e.message) if isinstance(e, SandboxError) else "no answer"
            message = (f"The VM did not boot within {BOOT_TIMEOUT:g} seconds ({why})."
                       if isinstance(e, TimeoutError) else f"The VM did not boot: {why}")
            raise SandboxError(message + self._console_tail(), sandbox=self.name) from None

    def _console_tail(self) -> str:
        assert self.state_dir is not None
        try:
            text = (self.state_dir / "console.log").read_bytes()[-2000:].decode(errors="replace")
        except OSError:
            return ""
        # virtiofsd's chatter (fv_..., virtio_...) says nothing of why the guest stopped.
        lines = [line for line in text.splitlines()
                 if line.strip() and not line.startswith(("fv_", "virtio_", "vu_"))][-5:]
        return (" Console: " + " | ".join(lines)) if lines else ""

    def _resolver(self) -> list[str]:
        """qemu's user-mode network answers the guest's DNS (10.0.2.3) by asking the
        resolver in its /etc/resolv.conf: slirp4netns's forwarder in qemu's namespace."""
        if not self._spec.network:
            return []
        assert self.state_dir is not None
        return ["--ro-bind", str(resolv_conf(self.state_dir)), "/etc/resolv.conf"]

    def _kvm_device(self, accel: Accelerator) -> list[str]:
        return ["--dev-bind", str(Path("/dev/kvm")), "/dev/kvm"] if accel.name == "kvm" else []

    def _kvm_groups(self, accel: Accelerator) -> list[int]:
        if accel.name != "kvm":
            return []
        with contextlib.suppress(OSError):
            return [os.stat("/dev/kvm").st_gid]
        return []

    def _as_host_user(self, groups: Sequence[int]) -> list[str]:
        if not self._root_runner:
            return ["setpriv", "--no-new-privs"]
        uid = str(self.host_uid)
        membership = ["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"]
        return ["setpriv", "--reuid", uid, "--regid", uid, *membership, "--no-new-privs"]

    async def _spawn(self, argv: list[str], fds: Sequence[int], log: object,
                     groups: Sequence[int] = (), enter: Sequence[str] = ()) -> None:
        assert hasattr(log, "fileno")
        process = await asyncio.create_subprocess_exec(
            *enter, *self._as_host_user(groups), "bwrap", *argv,
            stdin=asyncio.subprocess.DEVNULL, stdout=log.fileno(), stderr=log.fileno(),
            pass_fds=tuple(fds), start_new_session=True,
            env={"PATH": "/usr/bin:/bin"},
            preexec_fn=functools.partial(os.nice, self.nice) if self.nice else None,
        )  # fmt: skip
        self._processes.append(process)

    # --- commands --------------------------------------------------------------

    def _environment(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        env = {"HOME": BUILD_HOME, "USER": BUILD_USER, "LOGNAME": BUILD_USER,
               "SHELL": "/bin/sh", "PATH": DEFAULT_PATH, "LANG": "C.UTF-8"}  # fmt: skip
        if self._spec.nix_client is not None:
            env["NIX_REMOTE"] = "daemon"
        env.update(self._spec.environment)
        env.update(extra or {})
        return env

    def _image_source(self) -> Path | None:
        """Where virtiofsd is to find the image's tree, if not at its path: a root
        runner's images are the host root's files, shown to it as its own (``vm.idmap``)."""
        if not self._root_runner or isinstance(self._spec.image, DiskImage):
            return None
        assert self.state_dir is not None
        source = self.state_dir / "image"
        source.mkdir(mode=0o755)
        return source

    async def _start_nix(self, source: Path | None = None) -> NixGuest | None:
        """The proxy, store view and port of the guest's Nix, if the spec has a client."""
        if self._spec.nix_client is None:
            return None
        if isinstance(self._spec.image, DiskImage):
            raise SandboxError("Nix in a VM needs a Nix image (a disk image has its own).",
                               sandbox=self.name)
        assert self.state_dir is not None
        self.nix = NixGuest(self._spec, self.state_dir, self.name, source)
        await self.nix.start(self._spec.network)
        return self.nix

    def _budget(self, timeout: float | None) -> float | None:
        if self._deadline is None:
            return timeout
        left = max(self._deadline - time.monotonic(), 0.0)
        return left if timeout is None else min(timeout, left)

    def _live(self) -> tuple[AgentChannel, Path]:
        if not self._booted or self._closed or self._channel is None or self.state_dir is None:
            raise SandboxError("The sandbox is not running.", sandbox=self.name)
        return self._channel, self.state_dir / "xfer"

    def _write(self, path: Path, data: bytes | Path) -> None:
        """Write a file of xfer/ for the guest (virtiofsd, the host user, reads it).

        The guest's root can put anything in xfer/, a symlink to a host file at the
        name we are about to write included: whatever is there goes first, and the
        file is created anew, never followed.
        """
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise SandboxError(f"Cannot hand {path.name} to the VM: {e.strerror}.",
                               sandbox=self.name) from e
        with os.fdopen(fd, "wb") as out:
            if isinstance(data, Path):
                with data.open("rb") as source:
                    shutil.copyfileobj(source, out, 1024 * 1024)
            else:
                out.write(data)
            if self._root_runner:
                os.fchown(fd, self.host_uid, self.host_uid)

    async def _run(self, argv: Sequence[str], on_output: Lines, *, uid: int = BUILD_UID,
                   env: Mapping[str, str] | None = None, cwd: str = BUILD_HOME,
                   stdin: bytes | Path | None = None, capture: bool = False,
                   timeout: float | None = None) -> tuple[int, Path]:  # noqa: ASYNC109
        channel, xfer = self._live()
        run_id = channel.new_id()
        script = self._script(argv, env, cwd)
        await asyncio.to_thread(self._write, xfer / f"{run_id}.sh", script.encode())
        if stdin is not None:
            await asyncio.to_thread(self._write, xfer / f"{run_id}.in", stdin)
        budget = self._budget(timeout)
        try:
            async with asyncio.timeout(budget):
                status = await channel.run(run_id, uid, capture, on_output.feed)
        except TimeoutError:
            raise SandboxTimeout(
                f"{' '.join(argv)[:200]} did not finish within {budget:g} seconds.",
                sandbox=self.name, seconds=budget or 0.0) from None
        finally:
            on_output.close()
            for suffix in ("sh", "in"):
                with contextlib.suppress(OSError):
                    (xfer / f"{run_id}.{suffix}").unlink()
        return status, xfer / f"{run_id}.out"

    def _script(self, argv: Sequence[str], env: Mapping[str, str] | None, cwd: str) -> str:
        environment = " ".join(shlex.quote(f"{k}={v}") for k, v in
                               self._environment(env).items())  # fmt: skip
        return (f"cd -- {shlex.quote(cwd)} || exit 126\n"
                f"exec /run/nixfarm/busybox env -i {environment} "
                f"{' '.join(shlex.quote(a) for a in argv)}\n")  # fmt: skip

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
        status, _ = await self._run(argv, Lines(on_line), env=env, cwd=cwd, stdin=stdin,
                                    timeout=timeout)  # fmt: skip
        return status

    async def shell(self, argv: Sequence[str] | None, rows: int = 24, cols: int = 80,
                    env: Mapping[str, str] | None = None) -> TelnetTerminal:
        """``argv`` (None: a login shell) on a pty in the guest (``vm.telnet``)."""
        channel, xfer = self._live()
        await self._shell_port_free()
        command = list(argv) if argv else [self._login_shell(), "-l"]
        run_id = channel.new_id()
        environment = " ".join(shlex.quote(f"{k}={v}") for k, v in
                               self._environment({"TERM": "xterm", **(env or {})}).items())
        script = (f"cd -- {shlex.quote(BUILD_HOME)} || exit 126\n"
                  f"exec /run/nixfarm/busybox env -i {environment} "
                  f"{' '.join(shlex.quote(a) for a in command)}\n")  # fmt: skip
        await asyncio.to_thread(self._write, xfer / f"{run_id}.sh", script.encode())
        port = await self._take_shell_port()
        sock = self._shell_ports[port]
        TelnetTerminal.drain(sock)
        sock.send(telnet.window(rows, cols))
        token = secrets.token_hex(8)
        await channel.shell(port, run_id, token)
        done, release = self._session(xfer, port, run_id, "sh")
        return TelnetTerminal(sock, done, lambda: channel.stop_shell(port), release, token)

    def _session(self, xfer: Path, port: int, run_id: str, *leftovers: str
                 ) -> tuple[asyncio.Future[int], Callable[[], None]]:
        """A session's exit status (once the guest leaves it in xfer/) and what ends
        it on this side: its port given back, its files in xfer/ removed."""
        done = asyncio.ensure_future(self._shell_status(xfer / f"{run_id}.status"))

        def release() -> None:
            done.cancel()
            self._free_shells.add(port)
            for suffix in ("status", *leftovers):
                with contextlib.suppress(OSError):
                    (xfer / f"{run_id}.{suffix}").unlink()

        return done, release

    async def _shell_port_free(self) -> None:
        """Wait a moment for a free shell port: one that a session which just ended
        (the scp before this one) holds until the runner has seen that end."""
        deadline = time.monotonic() + SHELL_PORT_WAIT
        while not self._free_shells:
            if self._closed or time.monotonic() >= deadline:
                raise SandboxError(
                    f"At most {SHELL_PORTS} shells can be open into a VM at once.",
                    sandbox=self.name)
            await asyncio.sleep(0.05)

    async def _take_shell_port(self) -> int:
        await self._shell_port_free()  # again: another session may have taken it since
        return self._free_shells.pop()

    async def ssh(self, public_key: str) -> tuple[TelnetTerminal, str]:
        """The guest's sshd on a shell port, started now (``vm.sshd``)."""
        channel, xfer = self._live()
        await self._shell_port_free()
        setup = channel.new_id()
        script = self._script(["/run/nixfarm/sh", "-c", sshd.SETUP, "sh", public_key], None,
                              "/")  # fmt: skip
        await asyncio.to_thread(self._write, xfer / f"{setup}.sh", script.encode())
        try:
            # Not the job's deadline (a held job's may be past): a shell's is its own.
            async with self._ssh_setup, asyncio.timeout(sshd.SETUP_SECONDS):
                status = await channel.call(setup, 0)
            said = await asyncio.to_thread(_small_file, xfer / f"{setup}.out", 2000) or ""
        except TimeoutError:
            raise SandboxError("sshd's set-up in the VM did not finish in time.",
                               sandbox=self.name) from None
        finally:
            for suffix in ("sh", "out"):
                with contextlib.suppress(OSError):
                    (xfer / f"{setup}.{suffix}").unlink()
        if status == sshd.NO_SSHD:
            raise NoSsh("its image has no SSH server (/usr/sbin/sshd; the debian images "
                        "have one)", sandbox=self.name)
        host_key = said.strip().splitlines()[-1] if said.strip() else ""
        if status != 0 or not host_key.startswith("ssh-ed25519 "):
            raise SandboxError(f"Cannot set sshd up in the VM: {' '.join(said.split())}.",
                               sandbox=self.name)
        run_id = channel.new_id()
        port = await self._take_shell_port()
        sock = self._shell_ports[port]
        TelnetTerminal.drain(sock)
        await channel.ssh(port, run_id)
        done, release = self._session(xfer, port, run_id)
        stream = sshd.SshStream(sock, run_id, done, lambda: channel.stop_shell(port), release)
        return stream, " ".join(host_key.split()[:2])

    async def _shell_status(self, path: Path) -> int:
        """A shell session's exit status, once the guest has left it in xfer/ (255 if
        the VM goes first)."""
        while not self._closed:
            status = await asyncio.to_thread(_small_file, path)
            if status is not None:
                return int(status) if status.isdigit() else 255
            await asyncio.sleep(0.1)
        return 255

    def _login_shell(self) -> str:
        if isinstance(self._spec.image, DiskImage):
            return "/bin/sh"
        return login_shell(self._spec.rootfs)

    async def put(
        self, path: str, data: bytes, *, mode: int = 0o644, owner: int = BUILD_UID
    ) -> None:
        if owner not in (BUILD_UID, 0):
            raise SandboxError(f"Cannot give {path} to uid {owner}: only to build or root.",
                               sandbox=self.name)
        # Through the agent's ``call``: a job's first task line waits on a few puts.
        channel, xfer = self._live()
        run_id = channel.new_id()
        # Run by the agent's shell (as ``owner``) itself: no env, no second shell, two
        # programs fewer than ``_script`` (a put needs none of the job's environment).
        script = (f"set -- {shlex.quote(path)} {mode:o}\n"
                  f"cd -- {shlex.quote(BUILD_HOME)} || exit 126\n{_PUT}\n")
        await asyncio.to_thread(self._write, xfer / f"{run_id}.sh", script.encode())
        await asyncio.to_thread(self._write, xfer / f"{run_id}.in", data)
        budget = self._budget(None)
        try:
            async with asyncio.timeout(budget):
                status = await channel.call(run_id, owner)
            error = await asyncio.to_thread(_small_file, xfer / f"{run_id}.out", 1000) \
                if status else None
        except TimeoutError:
            raise SandboxTimeout(f"Writing {path} did not finish within {budget:g} seconds.",
                                 sandbox=self.name, seconds=budget or 0.0) from None
        finally:
            for suffix in ("sh", "in", "out"):
                with contextlib.suppress(OSError):
                    (xfer / f"{run_id}.{suffix}").unlink()
        if status != 0:
            why = " ".join((error or "").split()) or "unknown error"
            raise SandboxError(f"Cannot write {path} in the sandbox: {why}.", sandbox=self.name)

    async def get(self, path: str, dest: Path, *, limit: int | None = None) -> int:
        error: list[str] = []
        argv = ["/run/nixfarm/sh", "-c", copy_out_script(limit), "sh", path]
        status, out = await self._run(argv, Lines(error.append), capture=True)
        try:
            if status != 0:
                raise SandboxError(
                    f"Cannot copy {path} out of the sandbox: "
                    f"{' '.join(error).strip() or 'no such file'}.", sandbox=self.name)
            return await asyncio.to_thread(_copy_out, out, dest, self.name)
        finally:
            with contextlib.suppress(OSError):
                out.unlink()

    async def diagnose(self) -> list[str]:
        """The job's disk full (``stat -f`` of the home, which lives on it), and the guest
        kernel's out-of-memory kills since the last call (from the console's log; a
        guest's root could write such lines too, but only into its own job's log)."""
        found = await asyncio.to_thread(self._oom_kills)
        lines: list[str] = []
        try:  # (not df: it looks for the mount point, which the build user may not see)
            status, _ = await self._run(
                ["/run/nixfarm/busybox", "stat", "-f", "-c", "%a %S", BUILD_HOME],
                Lines(lines.append), timeout=60)
        except SandboxError:
            return found
        fields = lines[-1].split() if status == 0 and lines else []
        if len(fields) == 2 and all(field.isdigit() for field in fields):
            full = disk_full(self._spec.home_size, int(fields[0]) * int(fields[1]),
                             "what it writes (its home, /var/tmp, changes to its image)")
            found += [full] if full else []
        return found + await asyncio.to_thread(self._oom_kills)

    def _oom_kills(self) -> list[str]:
        if self.state_dir is None:
            return []
        try:
            with (self.state_dir / "console.log").open("rb") as console:
                console.seek(self._console_seen)
                text = console.read(1024**2)
        except OSError:
            return []
        # Only whole lines: the rest is read next time.
        text = text[: text.rfind(b"\n") + 1]
        self._console_seen += len(text)
        memory = sizes(max(self._spec.memory_limit or qemu.DEFAULT_MEMORY, 128 * 1024**2))
        return [f"out of memory: the VM's kernel killed {name.decode(errors='replace')} "
                f"(pid {pid.decode()}); the job's memory is limited to {memory}, the VM's RAM"
                for pid, name in _OOM_KILL.findall(text)]

    # --- shutdown --------------------------------------------------------------

    def _bwrap_loopback_failed(self) -> bool:
        """Whether a bubblewrap of this boot died setting up its network namespace's
        loopback: bwrap 0.8 reads a netlink answer it did not expect as a failure (it
        then names a stale errno: "loopback: Failed RTM_NEWADDR: No child processes"),
        seen now and then when VMs start and end side by side. Nothing of the job ran
        yet: booting again is safe."""
        if self.state_dir is None:
            return False
        try:
            return b"loopback: Failed" in (self.state_dir / "console.log").read_bytes()
        except OSError:
            return False

    def _forget_attempt(self) -> None:
        """What a failed boot attempt left, once ``_stop`` ended it: the next starts anew."""
        self._processes = []
        self._channel = None
        self._shell_ports = []
        self.nix = None
        self.state_dir = None
        self.phases = {}
        self._console_seen = 0

    async def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._stop()

    async def _stop(self) -> None:
        # Nothing in the guest is worth a clean power-off: it all goes. bwrap runs
        # qemu and virtiofsd in sessions of their own: they are killed by pid.
        doomed = set().union(*(descendants(p.pid) for p in self._processes))
        for process in self._processes:
            kill_group(process)
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        await uncancelled(self._reap(doomed))

    async def _reap(self, doomed: set[int]) -> None:
        # The state (the job's files, secrets included) goes whatever else fails.
        try:
            for process in self._processes:
                try:
                    await asyncio.wait_for(process.wait(), 10.0)
                except TimeoutError:
                    kill_group(process)
            for _ in range(500):  # up to ~10 s: SIGKILL is quick, but not instant
                left = await asyncio.to_thread(alive, doomed)
                if not left:
                    break
                await asyncio.sleep(0.02)
            if left:
                raise SandboxError(f"Processes {sorted(left)} outlived the VM.",
                                   sandbox=self.name)
        finally:
            if self.nix is not None:
                await self.nix.stop()
            if self._channel is not None:
                await self._channel.close()
            for port in self._shell_ports:
                port.close()
            if self.state_dir is not None:
                await asyncio.to_thread(remove_tree, self.state_dir)


def _copy_out(source: Path, dest: Path, name: str) -> int:
    """Copy the guest's file ``source`` (in xfer/) to ``dest``, never following a link."""
    try:
        # Non-blocking: root in the guest could have put a FIFO there, and opening one
        # would wait for a writer for ever.
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        raise SandboxError(f"The guest left no output to copy: {e.strerror}.", sandbox=name) from e
    with os.fdopen(fd, "rb") as reader:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SandboxError("The guest's output is not a regular file.", sandbox=name)
        os.set_blocking(fd, True)
        partial = dest.with_name(dest.name + ".part")
        with partial.open("wb") as writer:
            shutil.copyfileobj(reader, writer, 1024 * 1024)
            size = writer.tell()
        partial.rename(dest)
    return size


def _small_file(path: Path, size: int = 64) -> str | None:
    """The text of a small regular file the guest wrote in xfer/ (never a link), or None
    (``size`` bytes at most)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as reader:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        text = reader.read(size).decode(errors="replace").strip()
    return text or None


def reap(state_root: Path) -> list[Path]:
    """Remove the state directories of VMs whose runner died; return them.

    Their qemu went with the runner (``--die-with-parent``); only files remain.
    Call it when a runner starts, before it runs anything.
    """
    removed = []
    for leftover in sorted(state_root.glob(STATE_PREFIX + "*")):
        remove_tree(leftover)
        removed.append(leftover)
    return removed
