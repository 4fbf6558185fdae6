"""The bubblewrap sandbox against real bwrap, on the demo catalogue image."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tarfile
import tempfile
import threading
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path

import anyio
import pytest

from nixfarm.runner.sandbox import BwrapSandbox, SandboxError, SandboxSpec, SandboxTimeout
from nixfarm.runner.sandbox.limits import Kind

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parents[2]


async def output(box: BwrapSandbox, script: str, **kwargs: float) -> tuple[int, list[str]]:
    lines: list[str] = []
    status = await box.run(["/bin/sh", "-c", script], lines.append, **kwargs)  # type: ignore[arg-type]
    return status, lines


def sandbox_pids(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if marker.encode() in cmdline:
                found.append(int(entry))
    return found


async def test_runs_as_build_and_sees_nothing_of_the_host(demo_root: Path) -> None:
    async with BwrapSandbox(SandboxSpec(rootfs=demo_root)) as box:
        status, lines = await output(box, "id; pwd; echo to-stderr >&2; exit 3")
        assert status == 3
        assert lines == ["uid=1000(build) gid=1000(build)", "/home/build", "to-stderr"]
        checks = {
            "shadow": "cat /etc/shadow",
            "root": "ls /root/.ssh || ls -A /root | grep .",
            "repo": f"ls {REPO}",
            "host store": "ls /nix/store | grep -v -- -busybox | grep -q . && ls /nix/var",
            "host proc": "ps -o pid,comm | grep -E 'python|pytest|init|systemd'",
            "write root": "touch /evil",
            "write store": "touch /nix/store/evil",
            "write etc": "echo x >> /etc/passwd",
            "devices": "ls /dev/sda /dev/vda /dev/mem /dev/kvm",
        }
        for what, script in checks.items():
            status, lines = await output(box, script)
            assert status != 0, f"{what}: {lines}"
        # Only the sandbox's own processes: pid 1 (bwrap), its shell, and ps itself.
        status, lines = await output(box, "ps -o pid,user,args")
        assert status == 0
        assert len(lines) == 1 + 3, lines
        assert all(" build " in line for line in lines[1:]), lines
        status, lines = await output(box, "echo hi > ~/f; cat ~/f; echo t > /tmp/t; cat /tmp/t")
        assert (status, lines) == (0, ["hi", "t"])


async def test_put_and_get(demo_root: Path, tmp_path: Path) -> None:
    async with BwrapSandbox(SandboxSpec(rootfs=demo_root)) as box:
        await box.put("/home/build/.ssh/key", b"secret\n", mode=0o600)
        _, lines = await output(box, "stat -c '%a %U' ~/.ssh/key; cat ~/.ssh/key")
        assert lines == ["600 build", "secret"]
        assert await box.get("/home/build/.ssh/key", tmp_path / "key") == 7
        assert (tmp_path / "key").read_bytes() == b"secret\n"
        await output(box, "mkdir -p out/sub && echo a > out/sub/a")
        assert await box.get("/home/build/out", tmp_path / "out.tar") > 0
        with tarfile.open(tmp_path / "out.tar") as archive:
            assert "./sub/a" in archive.getnames()
        # A symlink to a host file resolves inside the sandbox, where it is not there.
        await output(box, "ln -s /etc/shadow ~/shadow")
        with pytest.raises(SandboxError, match="shadow"):
            await box.get("/home/build/shadow", tmp_path / "shadow")
        assert not (tmp_path / "shadow").exists()


def host_address() -> str:
    """An address of this host that is not loopback (where outbound traffic can go)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: it only picks a route
        address: str = probe.getsockname()[0]
    assert not address.startswith("127."), "this host has no address but loopback"
    return address


@pytest.fixture
def host_server() -> Iterator[int]:
    """A TCP server on every address of the host, loopback included."""
    server = socket.socket()
    server.bind(("0.0.0.0", 0))
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.sendall(b"hello from the host\n")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


async def test_network_off_and_on(demo_root: Path, host_server: int) -> None:
    loopback = f"echo | nc -w 2 127.0.0.1 {host_server}"
    async with BwrapSandbox(SandboxSpec(rootfs=demo_root, network=False)) as box:
        status, lines = await output(box, loopback)
        assert status != 0 and "hello from the host" not in lines
        status, lines = await output(box, "cat /proc/net/dev | tail -n +3 | cut -d: -f1")
        assert [line.strip() for line in lines] == ["lo"]
    async with BwrapSandbox(SandboxSpec(rootfs=demo_root, network=True)) as box:
        # Out, to the host's own address: yes; to its loopback, by either name: no.
        status, lines = await output(box, f"echo | nc -w 2 {host_address()} {host_server}")
        assert lines == ["hello from the host"]
        for target in ("127.0.0.1", "10.0.2.2"):
            status, lines = await output(box, f"echo | nc -w 2 {target} {host_server}")
            assert status != 0 and "hello from the host" not in lines, target
        status, lines = await output(box, "cat /proc/net/dev | tail -n +3 | cut -d: -f1")
        assert sorted(line.strip() for line in lines) == ["lo", "tap0"]
        # And no user namespaces inside: nothing to rearrange the sandbox with.
        status, lines = await output(box, "unshare -U true")
        assert status != 0 and "No space left on device" in " ".join(lines), lines


def processes_of(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:  # not /proc/PID's owner: that is root for non-dumpable processes
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            fields = dict(ln.split(":", 1) for ln in status.splitlines() if ":" in ln)
            # A zombie holds nothing but its pid until its parent (or init) reaps it.
            count += fields["Uid"].split()[0] == str(uid) and not fields[
                "State"
            ].strip().startswith("Z")
    return count


async def peak_processes(uid: int, work: Awaitable[object]) -> int:
    """The most processes of host ``uid`` seen while ``work`` runs (and 0.3 s after)."""
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, processes_of(uid))
            await anyio.sleep(0.02)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(watch)
        with contextlib.suppress(SandboxTimeout):
            await work
        await anyio.sleep(0.3)
        tasks.cancel_scope.cancel()
    return peak


@pytest.mark.parametrize("limits", ["cgroup", "rlimit"])
async def test_process_limit_contains_a_fork_bomb(demo_root: Path, limits: str) -> None:
    spec = SandboxSpec(rootfs=demo_root, process_limit=40)
    kind: Kind | None = "rlimit" if limits == "rlimit" else None
    # A uid of its own: an rlimit counts every process of the uid on the host, and
    # another run of this test at the same time (another checkout) would add to it.
    uid = 61000 + os.getpid() % 4000
    async with BwrapSandbox(spec, limits=kind, host_uid=uid) as box:
        if limits == "cgroup":
            assert box.confinement is not None and box.confinement.kind != "rlimit"
        sleepers = "i=0; while [ $i -lt 100 ]; do sleep 60 & i=$((i+1)); done; sleep 1"
        peak = await peak_processes(uid, output(box, sleepers, timeout=1))
        assert 30 <= peak <= 40 + 1  # + the nsenter outside, when counted by host uid
        bomb = "bomb() { bomb | bomb & }; bomb; while :; do :; done"
        assert await peak_processes(uid, output(box, bomb, timeout=1)) <= 40 + 1
    assert processes_of(uid) == 0


async def test_memory_limit(demo_root: Path) -> None:
    spec = SandboxSpec(rootfs=demo_root, memory_limit=64 * 1024**2)
    async with BwrapSandbox(spec) as box:
        status, _ = await output(box, 'x=$(head -c 200000000 /dev/zero | tr "\\0" a); echo ${#x}')
        assert status != 0
        status, lines = await output(box, 'x=$(head -c 1000000 /dev/zero | tr "\\0" a); echo ${#x}')
        assert (status, lines) == (0, ["1000000"])


@contextlib.contextmanager
def with_var_tmp(demo_root: Path) -> Iterator[Path]:
    """A copy of the demo image with a /var/tmp (Debian's images have one): a place
    outside home and /tmp where the build user may write. (A copy: the catalogue's is
    shared.) Readable by the VM's unprivileged virtiofsd."""
    where = Path(tempfile.mkdtemp(prefix="nixfarm-var-tmp-"))
    where.chmod(0o755)
    root = where / "root"
    shutil.copytree(demo_root, root, symlinks=True)
    (root / "var/tmp").mkdir(parents=True)
    (root / "var/tmp").chmod(0o1777)
    try:
        yield root
    finally:
        shutil.rmtree(where)


@pytest.fixture
def var_tmp_root(demo_root: Path) -> Iterator[Path]:
    with with_var_tmp(demo_root) as root:
        yield root


async def test_var_tmp_is_writable_within_the_quota_and_goes_with_the_sandbox(
        var_tmp_root: Path) -> None:
    # As a VM's /var/tmp (on the job's disk): an image's /var/tmp is writable, a file
    # system of the home's size, told when full, and gone with the sandbox.
    spec = SandboxSpec(rootfs=var_tmp_root, home_size=8 * 1024**2)
    async with BwrapSandbox(spec) as box:
        status, lines = await output(box, "dd if=/dev/zero of=/var/tmp/big bs=1M count=16")
        assert status != 0 and any("No space left" in line for line in lines), lines
        assert await box.diagnose() == [
            "the job's disk is full: its /var/tmp is limited to 8 MiB (jobs.home_bytes)"]
    async with BwrapSandbox(spec) as box:
        assert await output(box, "ls -A /var/tmp") == (0, [])
    assert not any((var_tmp_root / "var/tmp").iterdir())


async def test_cancel_and_shutdown_leave_nothing(demo_root: Path) -> None:
    box = BwrapSandbox(SandboxSpec(rootfs=demo_root))
    await box.boot()
    assert box.state_dir is not None and box.confinement is not None
    state, groups = box.state_dir, list(box.confinement.groups)
    await output(box, "sleep 1001 > /dev/null 2>&1 &")  # left in the background
    with anyio.move_on_after(0.5):
        await output(box, "sleep 1000")
    assert not sandbox_pids("sleep 1000")
    assert sandbox_pids("sleep 1001")
    with pytest.raises(SandboxTimeout):
        await output(box, "sleep 1002", timeout=0.3)
    assert not sandbox_pids("sleep 1002")
    await box.shutdown()
    assert not sandbox_pids("sleep 100")
    assert not state.exists()
    assert not any(g.exists() for g in groups)
    await box.shutdown()  # idempotent


async def test_a_background_process_holding_the_output_does_not_hang_a_task(
        demo_root: Path) -> None:
    """A process a task leaves running with the task's output (``setsid`` takes it out
    of the task's process group) neither keeps the task running once its shell ended
    nor stops a timeout from ending one: both return promptly."""
    async with BwrapSandbox(SandboxSpec(rootfs=demo_root)) as box:
        started = time.monotonic()
        status, lines = await output(box, "setsid sleep 1004 & echo started; exit 4")
        assert status == 4
        assert lines[0] == "started" and "still holds its output" in lines[-1], lines
        assert time.monotonic() - started < 20
        assert sandbox_pids("sleep 1004")  # it is the job's: it lives on in the sandbox
        started = time.monotonic()
        with pytest.raises(SandboxTimeout):
            await output(box, "setsid sleep 1005 & sleep 1006", timeout=1)
        assert time.monotonic() - started < 20
        assert not sandbox_pids("sleep 1006")
    assert not sandbox_pids("sleep 100")


def test_the_sweep_trusts_only_its_own_leftovers(tmp_path: Path) -> None:
    """A runner sweeps what dead runners' sandboxes left; the temporary directory is
    everyone's, so what another user planted there (or a leftover naming groups that
    are not sandboxes') is never acted on as root."""
    from nixfarm.runner.sandbox import bwrap

    dead = {"pid": 2**22 + 1, "started": "1", "kind": "cgroup2"}

    def plant(name: str, **owner: object) -> Path:
        state = tmp_path / f"nixfarm-sandbox-{name}"
        state.mkdir(mode=0o700)
        (state / "home").mkdir()
        (state / "owner.json").write_text(json.dumps({**dead, **owner}))
        return state

    fake_group = tmp_path / "fake-group"
    fake_group.mkdir()
    left = plant("left", groups=[])
    foreign = plant("foreign", groups=[])
    os.chown(foreign, 65534, 65534)
    aimed = plant("aimed", groups=[str(fake_group)])
    removed = bwrap.sweep(tmp_path)
    assert removed == [left] and not left.exists()
    assert foreign.exists() and aimed.exists()
    assert not (fake_group / "cgroup.kill").exists()


async def test_cancelled_inside_async_with(demo_root: Path) -> None:
    state: Path | None = None
    with anyio.move_on_after(0.5):
        async with BwrapSandbox(SandboxSpec(rootfs=demo_root)) as box:
            state = box.state_dir
            await output(box, "sleep 1003")
    assert state is not None and not state.exists()
    assert not sandbox_pids("sleep 1003")


async def test_start_cost(demo_root: Path) -> None:
    """Boot and a trivial command, measured (ENVIRONMENT.md: bwrap alone is ~6 ms)."""
    boots, runs = [], []
    for _ in range(5):
        async with BwrapSandbox(SandboxSpec(rootfs=demo_root)) as box:
            boots.append(box.boot_seconds)
            started = time.monotonic()
            assert await box.run(["true"], lambda _: None) == 0
            runs.append(time.monotonic() - started)
    boot, run = sorted(boots)[2], sorted(runs)[2]
    print(f"boot median {boot * 1000:.1f} ms, run median {run * 1000:.1f} ms")
    assert boot < 0.5 and run < 0.2


async def test_refuses_an_incomplete_root(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="lacks /bin/sh"):
        await BwrapSandbox(SandboxSpec(rootfs=tmp_path)).boot()
