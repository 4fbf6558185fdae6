"""What every sandbox does, the same way: one suite run against bwrap and vm.

Each kind boots one sandbox for the module (on the demo catalogue image, with a
/var/tmp added) and every test runs in it: what the steps of a job rely on, and
nothing kind-specific.
"""

from __future__ import annotations

import os
import tarfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from nixfarm.runner.sandbox import BwrapSandbox, Sandbox, SandboxError, SandboxSpec, SandboxTimeout
from nixfarm.runner.sandbox.terminal import Terminal
from nixfarm.runner.sandbox.vm import VmSandbox
from tests.runner.test_sandbox import with_var_tmp

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def image_root(demo_root: Path) -> Iterator[Path]:
    """The demo image with a /var/tmp (Debian's images have one): a place outside home
    and /tmp where the build user may write. (A copy: the catalogue's is shared.)"""
    with with_var_tmp(demo_root) as root:
        yield root


def new_box(kind: str, demo_root: Path, vm_dir: Path, state_root: Path) -> Sandbox:
    spec = SandboxSpec(rootfs=demo_root, memory_limit=256 * 1024**2,
                       environment={"FROM_SPEC": "spec"})
    return (BwrapSandbox(spec) if kind == "bwrap" else
            VmSandbox(spec, vm_dir=vm_dir, state_root=state_root))


@pytest.fixture(scope="module", params=["bwrap", "vm"])
async def sandbox(request: pytest.FixtureRequest, image_root: Path, vm_dir: Path,
                  state_root: Path) -> AsyncIterator[Sandbox]:
    async with new_box(request.param, image_root, vm_dir, state_root) as box:
        yield box


async def sh(box: Sandbox, script: str, **kwargs: object) -> tuple[int, list[str]]:
    lines: list[str] = []
    status = await box.run(["/bin/sh", "-c", script], lines.append, **kwargs)  # type: ignore[arg-type]
    return status, lines


async def test_commands_run_as_build_with_the_jobs_environment(sandbox: Sandbox) -> None:
    status, lines = await sh(sandbox, 'id -u; id -un; pwd; echo "$HOME $USER $FROM_SPEC $X"; '
                             "echo err >&2; exit 7", env={"X": "x"})
    assert (status, lines) == (7, ["1000", "build", "/home/build", "/home/build build spec x",
                                   "err"])
    status, lines = await sh(sandbox, "pwd; cat", cwd="/tmp", stdin=b"in\n")
    assert (status, lines) == (0, ["/tmp", "in"])


async def test_output_streams_in_order_as_it_is_written(sandbox: Sandbox) -> None:
    heard: list[tuple[float, str]] = []
    status = await sandbox.run(
        ["/bin/sh", "-c", "echo one; echo two >&2; echo three; sleep 2; echo four; exit 9"],
        lambda line: heard.append((time.monotonic(), line)))
    ended = time.monotonic()
    assert status == 9
    assert [line for _, line in heard] == ["one", "two", "three", "four"]
    # The first lines came while the command still ran, not all at its end.
    assert ended - heard[0][0] > 1.5


async def test_signals_in_commands_are_at_their_defaults(sandbox: Sandbox) -> None:
    _, lines = await sh(sandbox, "grep SigIgn /proc/self/status | cut -f2")
    assert int(lines[0], 16) & (1 << 1) == 0, lines  # SIGINT is not ignored
    status, lines = await sh(sandbox, "trap 'echo caught; exit 5' INT; kill -INT $$; "
                                      "sleep 5; echo missed")
    assert (status, lines) == (5, ["caught"])


async def test_no_network_no_host_files_no_runner_processes(sandbox: Sandbox) -> None:
    # Network off (the spec's default): a loopback and nothing else.
    _, lines = await sh(sandbox, "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '")
    assert lines == ["lo"]
    # The host's files: the repository, the host's root's home, are not there.
    status, lines = await sh(sandbox, f"ls {REPO} /root/.bashrc 2>&1 | head -1; "
                                      f"test -e {REPO}/pyproject.toml")
    assert status != 0, lines
    # The runner's processes (this pytest) are neither seen nor signalled.
    _, lines = await sh(sandbox, "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' ' "
                                 "| grep -c 'py[t]est'; true")
    assert lines == ["0"]
    assert os.getpid() > 1
    status, _ = await sh(sandbox, f"kill -0 {os.getpid()}")
    assert status != 0


async def test_writes_die_with_the_sandbox_and_memory_is_limited(
        sandbox: Sandbox, image_root: Path, vm_dir: Path,
        state_root: Path) -> None:
    kind = "vm" if isinstance(sandbox, VmSandbox) else "bwrap"
    first = new_box(kind, image_root, vm_dir, state_root)
    async with first:
        # Home, /tmp, and outside them (/var/tmp).
        status, lines = await sh(first, "echo x > ~/left; echo y > /tmp/left; "
                                        "echo z > /var/tmp/left; cat /var/tmp/left")
        assert (status, lines) == (0, ["z"])
        state = getattr(first, "state_dir", None)
        assert state is not None and state.exists()
    # Shut down: its state (the home, the VM's files) is gone.
    assert not state.exists()
    assert os.listdir(image_root / "var/tmp") == []
    async with new_box(kind, image_root, vm_dir, state_root) as second:
        status, lines = await sh(second, "ls ~/left /tmp/left /var/tmp/left 2>&1; true")
        assert len(lines) == 3 and all("No such" in line for line in lines), lines
        # 256 MiB for everything: a command that fills more is killed, the sandbox lives,
        # and ``diagnose`` says why (for the job's log). dd fills its buffer from
        # /dev/zero at memset speed, so even under TCG this takes seconds. A VM's limit
        # is its RAM, less what its kernel holds: 200 MiB is more than the guest has
        # free, less than its total (a larger buffer is refused outright, ENOMEM, and
        # the OOM killer never acts); a container's is its cgroup's 256 MiB.
        size = "200M" if kind == "vm" else "300M"
        status, lines = await sh(second, f"dd if=/dev/zero of=/dev/null bs={size} count=1",
                                 timeout=120)
        assert status != 0, lines
        reasons = await second.diagnose()
        if kind == "vm":
            assert len(reasons) == 1 and reasons[0].startswith(
                "out of memory: the VM's kernel killed dd (pid "), reasons
            assert reasons[0].endswith("the job's memory is limited to 256 MiB, the VM's RAM")
        elif isinstance(second, BwrapSandbox) and second.confinement is not None \
                and second.confinement.kind != "rlimit":  # (there malloc just fails)
            assert reasons == ["out of memory: 1 process(es) killed at the job's memory "
                               "limit of 256 MiB"], (reasons, lines)
        assert await second.diagnose() == []  # each kill is told once
        assert (await sh(second, "echo still here"))[1] == ["still here"]


async def test_the_image_is_read_only_and_home_and_tmp_are_not(sandbox: Sandbox) -> None:
    assert (await sh(sandbox, "touch /etc/x"))[0] != 0
    assert (await sh(sandbox, "touch /bin/x"))[0] != 0
    status, lines = await sh(sandbox, "echo a > ~/a; echo b > /tmp/b; cat ~/a /tmp/b")
    assert (status, lines) == (0, ["a", "b"])
    # What one command leaves is there for the next, as in one job.
    assert (await sh(sandbox, "cat ~/a"))[1] == ["a"]


async def test_a_task_can_open_a_pty(sandbox: Sandbox) -> None:
    # /dev/ptmx of a devpts instance of the sandbox's own: opening it makes a pty
    # (what script, expect and Python's pty module do first).
    status, lines = await sh(sandbox, "exec 3<>/dev/ptmx && ls /dev/pts && "
                                      "stat -c %a /dev/pts/ptmx")
    assert status == 0, lines
    assert lines[-1] == "666" and any(line.isdigit() for line in lines), lines


async def test_files_go_in_and_come_out(sandbox: Sandbox, tmp_path: Path) -> None:
    await sandbox.put("/home/build/.config/deep/f", b"data\n", mode=0o640)
    assert (await sh(sandbox, "stat -c '%a %u' ~/.config/deep/f"))[1] == ["640 1000"]
    assert await sandbox.get("/home/build/.config/deep/f", tmp_path / "f") == 5
    assert (tmp_path / "f").read_bytes() == b"data\n"
    assert await sandbox.get("/home/build/.config", tmp_path / "c.tar") > 0
    with tarfile.open(tmp_path / "c.tar") as archive:
        assert "./deep/f" in archive.getnames()
    with pytest.raises(SandboxError):
        await sandbox.get("/home/build/none", tmp_path / "none")


async def test_a_command_out_of_time_is_killed(sandbox: Sandbox) -> None:
    with pytest.raises(SandboxTimeout):
        await sh(sandbox, "sleep 50", timeout=1)
    with anyio.move_on_after(1):
        await sh(sandbox, "sleep 51")
    _, lines = await sh(sandbox, "ps -o args | grep -c '^sleep 5[01]'")
    assert lines == ["0"], lines


async def until(terminal: Terminal, wanted: bytes, seen: bytearray, seconds: float = 60
                ) -> None:
    """Read the terminal into ``seen`` until ``wanted`` shows (then drop up to it)."""
    with anyio.move_on_after(seconds):
        while wanted not in seen:
            chunk = await terminal.read()
            assert chunk, f"the terminal ended before {wanted!r}: {bytes(seen)!r}"
            seen += chunk
    assert wanted in seen, f"no {wanted!r} within {seconds:g} s: {bytes(seen)!r}"
    del seen[: seen.index(wanted) + len(wanted)]


async def test_a_terminal_inside_with_size_and_interrupts(sandbox: Sandbox) -> None:
    await sandbox.put("/home/build/seen.txt", b"left by a task\n")
    terminal = await sandbox.shell(None, rows=30, cols=100)
    seen = bytearray()
    try:
        await until(terminal, b"$ ", seen)  # a login shell's prompt
        await terminal.write(b"stty size; cat seen.txt; id -un; "
                             b"test -t 0 && echo on-a-$((0))-tty\r")
        for wanted in (b"30 100", b"left by a task", b"build", b"on-a-0-tty"):
            await until(terminal, wanted, seen)
        terminal.resize(40, 120)
        await terminal.write(b"stty size\r")
        await until(terminal, b"40 120", seen)
        # ^C interrupts the command in the foreground, and the shell goes on.
        await terminal.write(b"sleep 60; echo not-$((1+1))-interrupted\r")
        await anyio.sleep(1.0)
        await terminal.write(b"\x03")
        await terminal.write(b"echo alive-$((2*3))\r")
        with anyio.fail_after(20):
            await until(terminal, b"alive-6", seen)
        await terminal.write(b"exit 7\r")
        with anyio.fail_after(30):
            assert await terminal.wait() == 7
    finally:
        await terminal.close()
    assert b"not-2-interrupted" not in seen
    # A command on a terminal: its output and exit status.
    command = await sandbox.shell(["/bin/sh", "-c", "echo one-$((0+1)); exit 3"])
    seen = bytearray()
    try:
        await until(command, b"one-1", seen)
        with anyio.fail_after(30):
            assert await command.wait() == 3
    finally:
        await command.close()


async def test_a_terminal_command_s_last_output_is_never_lost(sandbox: Sandbox) -> None:
    # A command that prints and ends at once, again and again: its end races the
    # relay of its output (in a VM telnetd ended with its login program and dropped
    # what it had not relayed: with two vCPUs, often all of it). And a large output
    # read slowly, so that the relay is behind when the command ends.
    for n in range(6):
        command = await sandbox.shell(["/bin/sh", "-c", f"echo last-$(({n}+1)); exit {n}"])
        seen = bytearray()
        try:
            with anyio.fail_after(60):
                while chunk := await command.read():
                    seen += chunk
                assert await command.wait() == n
        finally:
            await command.close()
        assert f"last-{n + 1}".encode() in seen, (n, bytes(seen))
    command = await sandbox.shell(["/bin/sh", "-c", "seq 1 30000; echo end-of-$((6*7))"])
    seen = bytearray()
    try:
        with anyio.fail_after(120):
            while chunk := await command.read():
                seen += chunk
                await anyio.sleep(0.01)
            assert await command.wait() == 0
    finally:
        await command.close()
    lines = bytes(seen).replace(b"\r\n", b"\n").split(b"\n")
    assert [int(line) for line in lines if line.isdigit()] == list(range(1, 30001))
    assert b"end-of-42" in seen
