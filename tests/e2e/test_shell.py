"""`nixfarm shell` into held sandboxes, through a real farm (nginx, the app, its
embedded bwrap runner), and scheduled jobs through the CLI."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.farm import NIXFARM, RunningFarm, free_port
from tests.fixtures.jobs import wait_job

HOLD_MINUTES = 0.25  # 15 s


@pytest.fixture(scope="module")
def shell_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    running = RunningFarm(tmp_path_factory.mktemp("shell-farm") / "data", free_port(),
                          extra_env={"NIXFARM_JOBS__SHELL_HOLD_MINUTES": str(HOLD_MINUTES)})
    running.start()
    deadline = time.monotonic() + 60  # the embedded runner registers its images
    while not running.get("/api/v1/runners").json():
        assert time.monotonic() < deadline, "the embedded runner did not register"
        time.sleep(0.2)
    yield running
    running.stop()


def submit(farm: RunningFarm, manifest: str) -> dict[str, Any]:
    r = farm.request("POST", "/api/v1/jobs", json={"manifest": manifest})
    assert r.status_code == 201, r.text
    job: dict[str, Any] = r.json()
    return job


def held(farm: RunningFarm, job_id: int) -> str | None:
    value: str | None = farm.get(f"/api/v1/jobs/{job_id}").json()["held_until"]
    return value


def wait_released(farm: RunningFarm, job_id: int, seconds: float) -> float:
    started = time.monotonic()
    while held(farm, job_id) is not None:
        assert time.monotonic() - started < seconds, "the hold did not end"
        time.sleep(0.2)
    return time.monotonic() - started


def sandboxes(farm: RunningFarm) -> int:
    """bwrap processes under the farm (its embedded runner's sandboxes)."""
    assert farm.process is not None
    children: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/comm") as f:
                names[int(entry)] = f.read().strip()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    count, todo = 0, [farm.process.pid]
    while todo:
        pid = todo.pop()
        count += names.get(pid) == "bwrap"
        todo.extend(children.get(pid, []))
    return count


FAILING = """\
image: demo/latest
tasks:
  - build: |
      mkdir -p out && echo "made by the build task" > out/result.txt
      echo failing now
      exit 3
"""


def test_a_failed_jobs_sandbox_is_kept_for_its_owner(shell_farm: RunningFarm) -> None:
    farm = shell_farm
    job = wait_job(farm, submit(farm, FAILING)["id"], {"failed", "success"}, seconds=120)
    assert job["status"] == "failed"
    assert job["held_until"] is not None  # the API shows the hold and its end
    assert sandboxes(farm) >= 1
    setup = farm.get(job["setup_log_url"]).text
    assert f"nixfarm shell {job['id']}" in setup
    # A command, not interactive: it sees what the failed task left, as user build.
    done = farm.cli("shell", str(job["id"]), "--", "sh", "-c",
                    "cat out/result.txt; id -un; pwd; exit 4", check=False)
    assert done.returncode == 4, done.stderr
    assert done.stdout.replace("\r\n", "\n").splitlines() == [
        "made by the build task", "build", "/home/build"]
    # Someone else (even with jobs:submit) is told there is no such job.
    other = farm.cli("token", "create", "--name", "other", "--scope",
                     "jobs:submit").stdout.strip()
    refused = farm.cli("shell", str(job["id"]), "--", "true", token=other, check=False)
    assert refused.returncode != 0 and f"no job {job['id']}" in refused.stderr
    # A job that succeeded without shell: true keeps nothing.
    ok = wait_job(farm, submit(farm, "image: demo/latest\ntasks:\n  - a: echo done\n")["id"],
                  {"success"}, seconds=120)
    assert ok["held_until"] is None
    refused = farm.cli("shell", str(ok["id"]), "--", "true", check=False)
    assert refused.returncode != 0 and "not held" in refused.stderr
    # The hold ends by itself; the sandbox goes with it.
    wait_released(farm, job["id"], HOLD_MINUTES * 60 + 30)
    deadline = time.monotonic() + 10
    while sandboxes(farm) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sandboxes(farm) == 0
    late = farm.cli("shell", str(job["id"]), "--", "true", check=False)
    assert late.returncode != 0 and "not held" in late.stderr


def test_shell_true_keeps_a_successful_job_until_the_session_closes(
        shell_farm: RunningFarm) -> None:
    farm = shell_farm
    job = wait_job(farm, submit(farm, "image: demo/latest\nshell: true\ntasks:\n"
                                      "  - a: echo kept > kept.txt\n")["id"],
                   {"success", "failed"}, seconds=120)
    assert job["status"] == "success" and job["held_until"] is not None
    done = farm.cli("shell", str(job["id"]), "--", "cat", "kept.txt")
    assert done.stdout.strip() == "kept"
    # The last session closed: the sandbox goes at once, not when the hold ends.
    assert wait_released(farm, job["id"], 10) < HOLD_MINUTES * 60


def test_a_session_open_when_the_hold_ends_is_told_so(shell_farm: RunningFarm) -> None:
    """The sandbox goes at the hold's end, sessions or not: an open one ends then with
    an error (the runner's end went), never waits for an exit status forever."""
    farm = shell_farm
    job = wait_job(farm, submit(farm, "image: demo/latest\nshell: true\ntasks:\n"
                                      "  - a: 'true'\n")["id"],
                   {"success", "failed"}, seconds=120)
    env = {**os.environ, "NIXFARM_URL": farm.url, "NIXFARM_TOKEN": farm.token}
    started = time.monotonic()
    done = subprocess.run([NIXFARM, "shell", str(job["id"]), "--", "sleep", "1000"],
                          capture_output=True, text=True, env=env, timeout=HOLD_MINUTES * 60 + 90)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "ended without its command's exit status" in done.stderr, done.stderr
    assert time.monotonic() - started < HOLD_MINUTES * 60 + 60
    assert held(farm, job["id"]) is None


class Screen:
    """What the terminal showed, read as it comes; ``until`` moves past each match."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.seen = b""
        self.at = 0

    def until(self, wanted: bytes, seconds: float = 30) -> bytes:
        deadline = time.monotonic() + seconds
        while (found := self.seen.find(wanted, self.at)) < 0:
            left = deadline - time.monotonic()
            assert left > 0, f"no {wanted!r} in {self.seen[self.at:]!r}"
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:
                    chunk = b""
                assert chunk, f"the terminal closed before {wanted!r}: {self.seen[self.at:]!r}"
                self.seen += chunk
        shown = self.seen[self.at : found + len(wanted)]
        self.at = found + len(wanted)
        return shown


def _winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def test_an_interactive_shell_on_a_real_terminal(shell_farm: RunningFarm) -> None:
    farm = shell_farm
    job = wait_job(farm, submit(farm, FAILING)["id"], {"failed"}, seconds=120)
    master, slave = os.openpty()
    _winsize(slave, 30, 100)
    env = {**os.environ, "NIXFARM_URL": farm.url, "NIXFARM_TOKEN": farm.token}
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    cli = subprocess.Popen([NIXFARM, "shell", str(job["id"])], stdin=slave, stdout=slave,
                           stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    screen = Screen(master)
    try:
        screen.until(b"$ ")  # the remote shell's prompt: typing goes to it now
        os.write(master, b"stty size; echo ready-$((6*7))\r")
        screen.until(b"30 100")
        screen.until(b"ready-42")
        # A new window size reaches the remote terminal.
        _winsize(master, 40, 120)
        cli.send_signal(signal.SIGWINCH)
        time.sleep(0.5)
        os.write(master, b"stty size; echo sized-$((1+1))\r")
        screen.until(b"40 120")
        # ^C interrupts the remote command, not the shell nor the session.
        os.write(master, b"sleep 60; echo not-interrupted\r")
        time.sleep(1.0)
        started = time.monotonic()
        os.write(master, b"\x03")
        os.write(master, b"echo alive-$((2*3))\r")
        seen = screen.until(b"alive-6", seconds=20)
        assert time.monotonic() - started < 20 and b"\nnot-interrupted" not in seen
        os.write(master, b"cat out/result.txt; exit 7\r")
        screen.until(b"made by the build task")
        assert cli.wait(30) == 7
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        os.close(master)


def test_a_schedule_submits_jobs_through_the_cli(shell_farm: RunningFarm, tmp_path: Any
                                                 ) -> None:
    farm = shell_farm
    manifest = tmp_path / "nightly.yml"
    manifest.write_text("image: demo/latest\ntasks:\n  - a: echo scheduled\n")
    made = farm.cli("schedule", "create", "--cron", "* * * * * */2", str(manifest),
                    "--note", "every two seconds", "--json")
    schedule_id = __import__("json").loads(made.stdout)["id"]
    try:
        deadline = time.monotonic() + 30
        jobs: list[dict[str, Any]] = []
        while not jobs and time.monotonic() < deadline:
            jobs = farm.get("/api/v1/jobs", params={"tag": f"schedule:{schedule_id}"}
                            ).json()["jobs"]
            time.sleep(0.3)
        assert jobs and jobs[0]["note"] == "every two seconds"
        listed = farm.cli("schedule", "list").stdout
        assert "* * * * * */2" in listed
    finally:
        farm.cli("schedule", "delete", str(schedule_id))
    assert "*/2" not in farm.cli("schedule", "list").stdout
    bad = farm.cli("schedule", "create", "--cron", "0 3 * *", str(manifest), check=False)
    assert bad.returncode == 2 and "has 4 fields" in bad.stderr


@pytest.fixture
def long_hold_farm(tmp_path: Path) -> Iterator[RunningFarm]:
    """A farm whose holds outlast a slow session under load (``shell_farm``'s 15 s do
    not: the sandbox goes at the hold's end, open sessions or not)."""
    running = RunningFarm(tmp_path / "data", free_port(),
                          extra_env={"NIXFARM_JOBS__SHELL_HOLD_MINUTES": "10"})
    running.start()
    yield running
    running.stop()


def test_a_flood_of_output_reaches_a_slow_client_whole(long_hold_farm: RunningFarm) -> None:
    """The bus between the two WebSockets drops what a slow subscriber cannot take; the
    relay is flow-controlled so that nothing is lost: a client that stops reading
    stops the command's output (back-pressure down to its pty), then gets all of it."""
    farm = long_hold_farm
    job = wait_job(farm, submit(farm, "image: demo/latest\nshell: true\ntasks:\n"
                                      "  - a: 'true'\n")["id"],
                   {"success", "failed"}, seconds=120)
    lines = 1_000_000  # ~6.9 MB: more messages than a bus queue holds
    env = {**os.environ, "NIXFARM_URL": farm.url, "NIXFARM_TOKEN": farm.token}
    cli = subprocess.Popen([NIXFARM, "shell", str(job["id"]), "--", "seq", "1", str(lines)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        time.sleep(8)  # not read: the pipe fills, the client stops taking messages
        out, err = cli.communicate(timeout=240)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == 0, err
    got = out.replace(b"\r\n", b"\n").split()
    missing = len(got) != lines or got != [str(n).encode() for n in range(1, lines + 1)]
    assert not missing, (f"{len(got)} lines of {lines}; first wrong at "
                         f"{next((i for i, v in enumerate(got) if v != str(i + 1).encode()), -1)}")
