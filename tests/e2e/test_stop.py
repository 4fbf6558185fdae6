"""Stopping a real `nixfarm up` with real signals while real jobs run in sandboxes.

SIGTERM (or Ctrl-C) gives running jobs the grace period, then ends them as
interrupted, with their log complete, and queues them again once; the farm exits
soon after. A second signal stops it at once; a killed supervisor takes every
process of the farm with it; and a restarted farm settles its previous run's jobs at
once, not when their leases run out.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from nixfarm.runner.agent import INTERRUPTED_LINE
from nixfarm.supervisor import descendants
from tests.fixtures.farm import RunningFarm, free_port
from tests.fixtures.jobs import wait_job

GRACE = 2.0
#: What "within the grace and a few seconds" means here (a slow, shared machine).
FEW = 8.0


def _farm(data: Path, grace: float = GRACE) -> RunningFarm:
    return RunningFarm(data, free_port(), extra_env={
        "NIXFARM_JOBS__SHUTDOWN_GRACE_SECONDS": str(grace)})


def _submit(farm: RunningFarm, seconds: int) -> dict[str, Any]:
    manifest = ("image: nix\npackages: [busybox]\ntasks:\n"
                f"  - work: echo started; sleep {seconds}; echo finished\n")
    r = farm.request("POST", "/api/v1/jobs", json={"manifest": manifest})
    assert r.status_code == 201, r.text
    job: dict[str, Any] = r.json()
    return job


def _task_log(farm: RunningFarm, job: dict[str, Any]) -> str:
    # By path: the job's URLs name the port of the farm that made them.
    return farm.get(f"/api/v1/jobs/{job['id']}/tasks/work/log").text


def _wait_started(farm: RunningFarm, job: dict[str, Any], runs: int = 1) -> None:
    deadline = time.monotonic() + 90
    while _task_log(farm, job).count("started\n") < runs:
        assert time.monotonic() < deadline, f"job {job['id']} never started:\n{farm.log}"
        time.sleep(0.2)


def _stored(data: Path, job_id: int) -> tuple[str, str | None, list[str]]:
    """A job's status, reason and task statuses, read from a stopped farm's database."""
    with sqlite3.connect(data / "nixfarm.db") as db:
        status, reason = db.execute("SELECT status, reason FROM jobs WHERE id = ?",
                                    (job_id,)).fetchone()
        tasks = [t for (t,) in db.execute(
            "SELECT status FROM tasks WHERE job_id = ? ORDER BY position", (job_id,))]
    return status, reason, tasks


def _stop(farm: RunningFarm, sig: int, *then: tuple[float, int]) -> float:
    """Send ``sig`` to the supervisor alone (then each (delay, signal) of ``then``);
    the seconds until it exited."""
    assert farm.process is not None
    started = time.monotonic()
    farm.process.send_signal(sig)
    for delay, later in then:
        time.sleep(delay)
        farm.process.send_signal(later)
    try:
        farm.process.wait(120)
    except subprocess.TimeoutExpired:
        farm.stop(signal.SIGKILL)
        raise AssertionError(f"the farm did not stop:\n{farm.log.read_text()}") from None
    return time.monotonic() - started


def _none_alive(processes: dict[int, bytes], within: float = 5.0) -> None:
    """Every one of ``processes`` (pid: start time, from ``descendants``) is gone."""
    deadline = time.monotonic() + within
    while True:
        alive = [pid for pid, started in processes.items()
                 if _start_time(pid) == started]
        if not alive:
            return
        if time.monotonic() > deadline:
            names = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:80] for pid in alive}
            raise AssertionError(f"processes of the farm outlived it: {names}")
        time.sleep(0.1)


def _start_time(pid: int) -> bytes | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == b"Z" else fields[19]


def test_sigterm_interrupts_running_jobs_which_run_again_once_after_a_restart(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    farm = _farm(data)
    farm.start("--demo")
    short = _submit(farm, 15)  # finishes in its second run
    long = _submit(farm, 600)  # interrupted in both
    _wait_started(farm, short)
    _wait_started(farm, long)
    assert farm.process is not None
    processes = descendants(farm.process.pid)
    assert len(processes) >= 4  # worker, nginx, nix-daemon, sandboxes...
    took = _stop(farm, signal.SIGTERM)
    assert took < GRACE + FEW, farm.log.read_text()
    assert farm.process.returncode == 0
    _none_alive(processes)
    output = farm.log.read_text()
    assert "<html" not in output.lower()  # no proxy error pages in the terminal
    for job in (short, long):
        status, reason, tasks = _stored(data, job["id"])
        assert (status, tasks) == ("queued", ["pending"]), (status, reason, tasks)
        assert reason is not None and "interrupted" in reason

    again = RunningFarm(data, free_port(), extra_env=farm.extra_env)
    again.start("--demo")
    try:
        done = wait_job(again, short["id"], {"success", "failed", "interrupted"}, 120)
        assert done["status"] == "success", done
        # One log: the first run up to its end and the line saying why, then the second.
        log = _task_log(again, short)
        first, _, second = log.partition(INTERRUPTED_LINE)
        assert "started" in first and "finished" not in first, log
        assert "started" in second and "finished" in second, log
        assert "run 2 of this job" in again.get(f"/api/v1/jobs/{short['id']}/log").text
        _wait_started(again, long, runs=2)
        took = _stop(again, signal.SIGTERM)
        assert took < GRACE + FEW
    finally:
        again.stop()
    # Interrupted in its second run too: it stays so, and so does its task.
    status, reason, tasks = _stored(data, long["id"])
    assert (status, tasks) == ("interrupted", ["interrupted"]), (status, reason, tasks)
    assert _task_log_file(data, long["id"]).count(INTERRUPTED_LINE) == 2


def _task_log_file(data: Path, job_id: int) -> str:
    chunks = sorted((data / "store" / "jobs" / str(job_id) / "tasks" / "work").iterdir())
    return b"".join(chunk.read_bytes() for chunk in chunks).decode()


def test_a_second_signal_stops_at_once_and_a_restart_settles_the_job_at_once(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    farm = _farm(data, grace=300)
    farm.start("--demo")
    job = _submit(farm, 600)
    _wait_started(farm, job)
    assert farm.process is not None
    processes = descendants(farm.process.pid)
    took = _stop(farm, signal.SIGINT, (1.0, signal.SIGINT))
    assert took < 1.0 + 3.0, farm.log.read_text()
    assert farm.process.returncode == 128 + signal.SIGINT
    _none_alive(processes)
    assert _stored(data, job["id"])[0] == "running"  # nobody was left to say otherwise
    assert not (data / "server.json").exists()

    # The lease (30 s) has not run out: the restarted farm knows the job is not running.
    again = RunningFarm(data, free_port(), extra_env=farm.extra_env)
    started = time.monotonic()
    again.start("--demo")
    try:
        deadline = started + 25
        while "interrupted" not in str(again.get(f"/api/v1/jobs/{job['id']}").json()["reason"]):
            assert time.monotonic() < deadline, again.get(f"/api/v1/jobs/{job['id']}").json()
            time.sleep(0.2)
        _wait_started(again, job, runs=2)  # queued again, and running again
    finally:
        again.stop(signal.SIGKILL)


def test_a_killed_supervisor_takes_every_process_of_the_farm_with_it(tmp_path: Path) -> None:
    farm = _farm(tmp_path / "data")
    farm.start("--demo")
    job = _submit(farm, 600)
    _wait_started(farm, job)
    assert farm.process is not None
    processes = descendants(farm.process.pid)
    names = b" ".join(Path(f"/proc/{pid}/cmdline").read_bytes() for pid in processes)
    assert b"nginx" in names and b"nix-daemon" in names and b"bwrap" in names
    os.kill(farm.process.pid, signal.SIGKILL)
    farm.process.wait()
    _none_alive(processes, within=5.0)
