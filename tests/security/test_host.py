"""Host hardening (issue 12, point 9): nginx's workers are not root, the farm's files
are the farm's alone, and a runner's token does not stay on its command line."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import nixfarm.demo
from nixfarm.hardening import WWW_USER
from tests.fixtures.farm import NIXFARM, RunningFarm, free_port


def processes() -> Iterator[tuple[int, str]]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                yield int(entry), Path(f"/proc/{entry}/cmdline").read_bytes().replace(
                    b"\0", b" ").decode(errors="replace")
            except OSError:
                continue


def status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split()[1]
    raise AssertionError(f"no {name} in /proc/{pid}/status")


@pytest.fixture(scope="module")
def open_farm() -> Iterator[RunningFarm]:
    """A farm whose data directory others could reach but for its own mode, as in
    /var/lib (a test's temporary directory is closed to everyone but root)."""
    where = Path(tempfile.mkdtemp(prefix="nixfarm-sec-host-", dir="/var/tmp"))
    where.chmod(0o755)
    farm = RunningFarm(where / "data", free_port(),
                       extra_env={"NIXFARM_JOBS__EMBEDDED_RUNNER_SLOTS": "0"})
    farm.start()
    yield farm
    farm.stop()
    shutil.rmtree(where, ignore_errors=True)


def test_nginx_workers_are_not_root_and_still_serve(open_farm: RunningFarm) -> None:
    config = str(open_farm.data_dir / "edge/run/nginx.conf")
    (master,) = [pid for pid, cmd in processes() if "nginx: master" in cmd and config in cmd]
    workers = [pid for pid, cmd in processes() if "nginx: worker" in cmd
               and status_field(pid, "PPid") == str(master)]
    assert workers
    www = pwd.getpwnam(WWW_USER).pw_uid
    assert {status_field(pid, "Uid") for pid in workers} == {str(www)}
    # Everything still flows through them: the app behind, and the files they send.
    assert open_farm.get("/healthz").status_code == 200
    cache, _ = open_farm.create_cache()
    assert open_farm.get(f"/cache/{cache}/nix-cache-info").status_code == 200


def as_user(user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", "--reuid", user, "--regid", user, "--clear-groups",
                           *argv], capture_output=True, text=True)


def as_www(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", "--reuid", WWW_USER, "--regid", WWW_USER,
                           "--init-groups", *argv], capture_output=True, text=True)


def test_the_farms_files_are_the_farms_alone(open_farm: RunningFarm) -> None:
    data = open_farm.data_dir
    assert data.stat().st_mode & 0o007 == 0
    for name in ("nixfarm.db", "admin.token", "secrets.key"):
        assert (data / name).stat().st_mode & 0o077 == 0, name
    for who in ("nobody", "daemon"):
        assert as_user(who, "ls", str(data)).returncode != 0
        assert as_user(who, "cat", str(data / "admin.token")).returncode != 0
        assert as_user(who, "ls", str(data / "store")).returncode != 0
    # nginx's user passes through to what it serves, and no further.
    assert as_www("ls", str(data)).returncode != 0
    assert as_www("cat", str(data / "nixfarm.db")).returncode != 0
    assert as_www("ls", str(data / "edge/www")).returncode == 0


def test_a_runner_takes_its_token_off_its_command_line(tmp_path: Path,
                                                       open_farm: RunningFarm) -> None:
    token = open_farm.cli("token", "create", "--name", f"r-{uuid.uuid4().hex[:6]}",
                          "--scope", "runner").stdout.strip()
    log = tmp_path / "runner.log"
    env = {k: v for k, v in os.environ.items() if k != "NIXFARM_TOKEN"}
    with log.open("wb") as out:
        runner = subprocess.Popen(
            [NIXFARM, "runner", "--url", open_farm.url, "--token", token, "--name",
             "cmdline", "--work-dir", str(tmp_path / "work"), "--nix-source",
             str(nixfarm.demo.path()), "--no-nix-daemon"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while "registered" not in log.read_text():
            assert runner.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert token not in Path(f"/proc/{runner.pid}/cmdline").read_text()
        assert not [pid for pid, cmd in processes() if token in cmd]
        assert "use --token-file or NIXFARM_RUNNER_TOKEN" in log.read_text()
    finally:
        os.killpg(runner.pid, 15)
        runner.wait(30)


def test_a_runner_that_is_not_root_refuses_to_give_jobs_the_systems_nix(
        tmp_path: Path) -> None:
    """Not root, it could only hand jobs the system's nix-daemon, which would build
    their fixed-output derivations with the host's network (issue 12): it refuses,
    naming the two ways out, before it contacts any farm."""
    env = {**{k: v for k, v in os.environ.items() if k != "NIXFARM_TOKEN"},
           "NIXFARM_RUNNER_TOKEN": "not-needed"}
    work = tmp_path / "work"
    done = subprocess.run(
        ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups", NIXFARM,
         "runner", "--url", "http://127.0.0.1:9", "--work-dir", str(work)],
        capture_output=True, text=True, env=env, timeout=120)
    said = " ".join(done.stderr.split())
    assert done.returncode == 2, done
    assert "A runner that is not root cannot give jobs a Nix of their own" in said
    assert "Run the runner as root, or with --no-nix-daemon" in said
    assert not work.exists()
