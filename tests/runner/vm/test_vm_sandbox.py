"""The vm sandbox against real qemu: one VM on a Nix closure (no network) shared by
the tests of this module, and one with network on the demo catalogue image."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import tarfile
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import anyio
import pytest

from nixfarm.runner.roots import Images, PreparedImage
from nixfarm.runner.sandbox import (
    DiskImage,
    NixClosure,
    SandboxError,
    SandboxSpec,
    SandboxTimeout,
)
from nixfarm.runner.sandbox.processes import Lines, alive, descendants
from nixfarm.runner.sandbox.vm import VmSandbox
from tests.runner.test_sandbox import host_address

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[3]


async def output(box: VmSandbox, script: str, **kwargs: object) -> tuple[int, list[str]]:
    lines: list[str] = []
    status = await box.run(["/bin/sh", "-c", script], lines.append, **kwargs)  # type: ignore[arg-type]
    return status, lines


@pytest.fixture(scope="module")
async def hello_image(images: Images) -> PreparedImage:
    return await images.prepare("nix", None, ["hello"])


@pytest.fixture(scope="module")
async def box(hello_image: PreparedImage, vm_dir: Path, state_root: Path
              ) -> AsyncIterator[VmSandbox]:
    spec = SandboxSpec(NixClosure(hello_image.root, hello_image.store_paths),
                       memory_limit=512 * 1024**2, environment={"FROM_SPEC": "spec"})
    async with VmSandbox(spec, vm_dir=vm_dir, state_root=state_root) as vm:
        yield vm


async def test_runs_as_build_in_a_login_like_environment(box: VmSandbox) -> None:
    status, lines = await output(
        box, 'id; pwd; echo "$HOME $USER $LOGNAME $FROM_SPEC"; echo to-stderr >&2; exit 3')
    assert status == 3
    assert lines == ["uid=1000(build) gid=1000(build) groups=1000(build)", "/home/build",
                     "/home/build build build spec", "to-stderr"]
    status, lines = await output(box, "hello; echo $X; pwd; cat", env={"X": "from-env"},
                                 cwd="/tmp", stdin=b"from stdin\n")
    assert (status, lines) == (0, ["Hello, world!", "from-env", "/tmp", "from stdin"])
    status, lines = await output(box, "exit 0", cwd="/nonexistent")
    assert status == 126
    # The VM's description, for the job's log, names its accelerator.
    assert box.accelerator is not None and box.accelerator.name in box.description
    # Where its boot went (bench/vm_bench.py prints it): the host's phases in their order,
    # and the guest's init, by its own clock, up to the agent's ``ready``.
    assert list(box.phases) == ["disk", "virtiofsd", "qemu", "ready"], box.phases
    assert sorted(box.phases.values()) == list(box.phases.values())
    assert box.phases["ready"] == pytest.approx(box.boot_seconds, abs=0.01)
    guest = box.guest_phases
    assert list(guest) == ["init", "modules", "ports", "share", "disk", "root", "switch",
                           "ready"], guest
    assert guest["init"] > 0 and sorted(guest.values()) == list(guest.values()), guest
    assert guest["ready"] == box.guest_seconds
    # init names the machine (through /proc, as builds.sr.ht's guests are named).
    assert await output(box, "cat /proc/sys/kernel/hostname") == (0, ["nixfarm"])


async def test_sees_exactly_its_closure_and_nothing_of_the_host(
        box: VmSandbox, hello_image: PreparedImage) -> None:
    status, lines = await output(box, "ls /nix/store")
    assert status == 0
    assert sorted(lines) == sorted(os.path.basename(p) for p in hello_image.store_paths)
    checks = {
        "repo": f"ls {REPO}",
        "write store": "touch /nix/store/evil",
        "write image": "echo x >> /etc/passwd",
        "write root": "touch /evil",
        "host processes": "ps -o pid,args | grep -E 'python|pytest|qemu|virtiofsd' | grep -v grep",
        "network": "ip -o link | grep -v ': lo:'",
        "agent's files": "ls /run/nixfarm/private",
    }
    for what, script in checks.items():
        status, lines = await output(box, script)
        assert status != 0, f"{what}: {lines}"
    status, lines = await output(box, "echo hi > ~/f; cat ~/f; echo t > /tmp/t; cat /tmp/t")
    assert (status, lines) == (0, ["hi", "t"])


async def test_output_streams_as_it_is_written(box: VmSandbox) -> None:
    arrivals: list[tuple[float, str]] = []
    status = await box.run(["/bin/sh", "-c", "echo first; sleep 3; echo second"],
                           lambda line: arrivals.append((time.monotonic(), line)))
    assert status == 0 and [line for _, line in arrivals] == ["first", "second"]
    assert arrivals[1][0] - arrivals[0][0] > 2.0


class _Enough(Exception):
    pass


async def test_a_line_callback_that_raises_stops_the_command(box: VmSandbox) -> None:
    """What the caller's line callback raises (the log limit does) comes out of run()
    at once, the command is stopped, and the VM runs the next command cleanly."""
    seen: list[str] = []

    def stop_at_three(line: str) -> None:
        seen.append(line)
        if len(seen) == 3:
            raise _Enough

    started = time.monotonic()
    with pytest.raises(_Enough):
        await box.run(["/bin/sh", "-c", "i=0; while :; do i=$((i+1)); echo line $i; "
                       "sleep 0.1; done"], stop_at_three)
    assert time.monotonic() - started < 30
    assert (await output(box, "echo next")) == (0, ["next"])


async def test_put_and_get(box: VmSandbox, tmp_path: Path) -> None:
    await box.put("/home/build/.ssh/key", b"secret\n", mode=0o600)
    _, lines = await output(box, "stat -c '%a %U' ~/.ssh/key; cat ~/.ssh/key")
    assert lines == ["600 build", "secret"]
    assert await box.get("/home/build/.ssh/key", tmp_path / "key") == 7
    assert (tmp_path / "key").read_bytes() == b"secret\n"
    await output(box, "mkdir -p out/sub && echo a > out/sub/a && ln -s /etc/passwd out/link")
    assert await box.get("/home/build/out", tmp_path / "out.tar") > 0
    with tarfile.open(tmp_path / "out.tar") as archive:
        names = sorted(archive.getnames())
        assert names == [".", "./link", "./sub", "./sub/a"]
        assert archive.getmember("./link").issym()
    with pytest.raises(SandboxError, match="Cannot copy /home/build/missing out"):
        await box.get("/home/build/missing", tmp_path / "missing")
    assert not (tmp_path / "missing").exists()
    with pytest.raises(SandboxError, match="Cannot write /nix/store/x"):
        await box.put("/nix/store/x", b"")


async def test_the_guests_root_cannot_make_the_host_write_through_xfer(
        box: VmSandbox, tmp_path: Path) -> None:
    # The guest's root owns the exchange directory: it plants symlinks to a host file
    # at names runs could have. Runs' names cannot be guessed, and the host would
    # replace such a link, never follow it.
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    plant = " ".join(f"ln -sf {victim} $X/{n}.sh; ln -sf {victim} $X/{n}.in;"
                     for n in range(1, 200))  # fmt: skip
    lines: list[str] = []
    status, _ = await box._run(["/run/nixfarm/sh", "-c", f"X=/run/nixfarm/private/share/xfer; "
                                f"{plant} ls $X | wc -l"], Lines(lines.append), uid=0)
    assert status == 0 and int(lines[0]) >= 398, lines
    status, lines = await output(box, "cat", stdin=b"through stdin\n")
    assert (status, lines) == (0, ["through stdin"])
    assert victim.read_text() == "untouched\n"


async def test_a_command_past_its_time_is_killed_and_the_vm_lives_on(box: VmSandbox) -> None:
    started = time.monotonic()
    with pytest.raises(SandboxTimeout, match="did not finish within 2 seconds"):
        await output(box, "echo start; sleep 60", timeout=2)
    assert time.monotonic() - started < 15
    with anyio.move_on_after(2):  # a cancelled caller kills the command the same way
        await output(box, "sleep 61")
    status, lines = await output(box, "ps -o args | grep -c 'sleep 6[01]'")
    assert lines == ["0"], lines
    assert status != 0


@contextlib.contextmanager
def listening(address: str) -> Iterator[int]:
    server = socket.socket()
    server.bind((address, 0))
    server.listen()

    def answer() -> None:
        with contextlib.suppress(OSError):
            conn, _ = server.accept()
            conn.sendall(b"hello from the host\n")
            conn.close()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


async def test_network_and_nothing_left_after_shutdown(
        demo_root: Path, vm_dir: Path, state_root: Path) -> None:
    spec = SandboxSpec(rootfs=demo_root, network=True, memory_limit=256 * 1024**2)
    vm = VmSandbox(spec, vm_dir=vm_dir, state_root=state_root)
    async with vm:
        processes = set().union(*(descendants(p.pid) | {p.pid} for p in vm._processes))
        assert len(alive(processes)) >= 2  # qemu and virtiofsd, each under its bwrap
        status, lines = await output(vm, "ip -o -4 addr show eth0; ip route; cat /etc/resolv.conf")
        assert status == 0
        assert "inet 10.0.2.15/25" in lines[0]
        assert "default via 10.0.2.2 dev eth0" in [line.strip() for line in lines]
        assert "nameserver 10.0.2.3" in lines
        # Out to the host's own address, yes; to its loopback (the runner's Redis,
        # PostgreSQL, the farm), which qemu alone would map to 10.0.2.2, no.
        with listening(host_address()) as port:
            status, lines = await output(vm, f"nc {host_address()} {port} < /dev/null")
        assert (status, lines) == (0, ["hello from the host"])
        with listening("127.0.0.1") as port:
            status, lines = await output(vm, f"nc -w 3 10.0.2.2 {port} < /dev/null")
        assert "hello from the host" not in lines and status != 0, (status, lines)
        await output(vm, "echo data > ~/written")
        assert vm.state_dir is not None and vm.state_dir.exists()
    await asyncio.sleep(0)
    assert not alive(processes)
    assert not vm.state_dir.exists()


async def test_a_disk_image_boots_and_the_job_never_writes_it(
        demo_root: Path, vm_dir: Path, state_root: Path, tmp_path: Path) -> None:
    disk = tmp_path / "root.img"
    await anyio.run_process(["mkfs.ext4", "-q", "-d", str(demo_root), str(disk), "32M"])
    before = hashlib.sha256(disk.read_bytes()).hexdigest()
    quota = 16 * 1024**2
    spec = SandboxSpec(DiskImage(disk, "raw"), memory_limit=256 * 1024**2, home_size=quota)
    async with VmSandbox(spec, vm_dir=vm_dir, state_root=state_root) as vm:
        await vm.put("/etc/written-by-the-job", b"root's file\n", owner=0)
        status, lines = await output(
            vm, "id -u; hello; cat /etc/written-by-the-job; stat -c %U /etc/written-by-the-job;"
                "touch /etc/by-build")
        assert status != 0  # build may not write /etc: the last command fails
        assert lines[:4] == ["1000", "Hello, world!", "root's file", "root"], lines
        assert await vm.diagnose() == []
        # The job's writes, the image's changes (root's file above) among them, are held
        # to its quota (jobs.home_bytes, as a bwrap job's home): past it, ENOSPC inside...
        status, lines = await output(vm, "dd if=/dev/zero of=$HOME/a bs=1M count=10 && "
                                         "dd if=/dev/zero of=$HOME/b bs=1M count=10")
        assert status != 0 and any("No space left on device" in line for line in lines), lines
        assert await vm.diagnose() == [
            "the job's disk is full: what it writes (its home, /var/tmp, changes to its "
            "image) is limited to 16 MiB (jobs.home_bytes)"]
        # ... and the host's disk holds at most the quota of it, whatever the guest did.
        assert vm.state_dir is not None
        scratch = os.stat(vm.state_dir / "disk.img")
        assert scratch.st_size == quota and scratch.st_blocks * 512 <= quota
        assert scratch.st_blocks * 512 > quota // 2  # (it is that file the guest filled)
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == before


async def test_a_boot_whose_bubblewrap_fails_at_its_loopback_is_tried_again(
        demo_root: Path, vm_dir: Path, state_root: Path) -> None:
    """bwrap 0.8 now and then fails to set its loopback up ("loopback: Failed
    RTM_NEWADDR: No child processes") when VMs start and end side by side: the boot is
    tried once more, from nothing, and the failed attempt leaves nothing behind."""
    spec = SandboxSpec(rootfs=demo_root, memory_limit=256 * 1024**2)
    vm = VmSandbox(spec, vm_dir=vm_dir, state_root=state_root)
    real_spawn = vm._spawn
    first: list[Path] = []

    async def spawn(argv: list[str], fds: Sequence[int], log: object,
                    groups: Sequence[int] = (), enter: Sequence[str] = ()) -> None:
        if not first:  # the first attempt's first bubblewrap (virtiofsd's) says so, and ends
            assert vm.state_dir is not None
            first.append(vm.state_dir)
            argv = ["--ro-bind", "/", "/", "sh", "-c",
                    "echo 'bwrap: loopback: Failed RTM_NEWADDR: No child processes' >&2; "
                    "exit 1"]
        await real_spawn(argv, fds, log, groups, enter)

    vm._spawn = spawn  # type: ignore[method-assign]
    async with vm:
        assert first and vm.state_dir is not None and vm.state_dir != first[0]
        assert not first[0].exists()
        assert await output(vm, "echo booted") == (0, ["booted"])
