"""The jobs benchmark: first-log latency, throughput, live log latency.

    .venv/bin/python bench/jobs_bench.py [--latency-jobs 20] [--throughput-jobs 60]

One run against a real ``nixfarm up --demo`` whose embedded runner has two slots
(bubblewrap sandboxes; ``--standalone``: a separate ``nixfarm runner --slots 2``
process instead), stopping by itself:

1. first log line: a warm runner (its ``nix`` images composed by one warm-up job per
   package set), jobs one after another; for each, the time from sending ``POST
   /api/v1/jobs`` to the first ``log`` event of its first task on the job's SSE stream,
   read with one persistent HTTP client. Baseline: a bare ``bwrap --unshare-all`` of
   the same ``echo`` (process start to its first line on stdout) — the sandbox's own
   floor, with no server, queue or log shipping in between;
2. throughput: N trivial jobs (one task, ``echo ok``) submitted back to back, timed from the
   first submit until every job is final; jobs per minute. Baseline: the same number
   of bare ``bwrap --unshare-all`` runs, two at a time;
3. live log latency: one task printing the time (busybox ``adjtimex``: its ``date``
   has no ``%N``) every 50 ms, 200 lines; an SSE follower subtracts each line's
   printed time from its arrival time (the sandbox's clock is the host's). p50/p99.

Results: a Markdown table on stdout and JSON in ``bench/out/``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import connect_sse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    DEMO,
    NIXFARM,
    Row,
    _stop_group,
    machine,
    nixfarm_up,
    table,
    temp_dir,
    write_json,
)

FINAL = {"success", "failed", "timeout", "cancelled"}
TRIVIAL = "image: nix\npackages: [coreutils]\ntasks:\n  - ok: echo ok\n"


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile: with few samples, a value that was really seen."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


@contextlib.contextmanager
def farm(work: Path, slots: int, standalone: bool) -> Iterator[tuple[str, str]]:
    """``nixfarm up --demo`` with a runner of ``slots`` slots: the embedded one, or a
    separate ``nixfarm runner`` process (``standalone``). Yields (url, admin token)."""
    env = {"NIXFARM_JOBS__EMBEDDED_RUNNER_SLOTS": "0" if standalone else str(slots),
           "NIXFARM_NIX_OPTIONS__SUBSTITUTERS": "", "XDG_CACHE_HOME": str(work / "xdg")}
    runner: subprocess.Popen[bytes] | None = None
    with nixfarm_up(work / "data", "--demo", env=env) as server:
        try:
            if standalone:
                cli_env = {**os.environ, **env, "NIXFARM_URL": server.url,
                           "NIXFARM_TOKEN": server.token}
                runner_token = subprocess.run(
                    [NIXFARM, "token", "create", "--name", "bench-runner", "--scope", "runner"],
                    env=cli_env, check=True, capture_output=True, text=True).stdout.strip()
                with (work / "runner.log").open("ab") as sink:
                    runner = subprocess.Popen(
                        [NIXFARM, "runner", "--url", server.url, "--token", runner_token,
                         "--name", "bench", "--slots", str(slots),
                         "--work-dir", str(work / "runner"), "--nix-source", str(DEMO)],
                        stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                        env={**os.environ, **env})
            yield server.url, server.token
        finally:
            if runner is not None:
                _stop_group(runner)


class Api:
    """One persistent HTTP client for submits and reads (connections kept alive)."""

    def __init__(self, url: str, token: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=120,
                                   headers={"Authorization": f"Bearer {token}"})

    def submit(self, manifest: str) -> dict[str, Any]:
        r = self.client.post("/api/v1/jobs", json={"manifest": manifest})
        if r.status_code != 201:
            raise RuntimeError(f"submit failed: {r.status_code} {r.text}")
        job: dict[str, Any] = r.json()
        return job

    def job(self, job_id: int) -> dict[str, Any]:
        r = self.client.get(f"/api/v1/jobs/{job_id}")
        r.raise_for_status()
        job: dict[str, Any] = r.json()
        return job

    def wait(self, job_id: int, seconds: float = 900) -> dict[str, Any]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["status"] in FINAL:
                return job
            time.sleep(0.1)
        raise RuntimeError(f"job {job_id} not done after {seconds} s")

    def events(self, job_id: int) -> Iterator[tuple[float, str, dict[str, Any]]]:
        """The job's SSE events as (arrival time.time(), type, data), until ``end``."""
        with connect_sse(self.client, "GET", f"/api/v1/jobs/{job_id}/events") as source:
            source.response.raise_for_status()
            for event in source.iter_sse():
                yield time.time(), event.event, event.json()
                if event.event == "end":
                    return

    def logs(self, job: dict[str, Any]) -> str:
        urls = [job["setup_log_url"], *(t["log_url"] for t in job["tasks"])]
        return "".join(self.client.get(u).text for u in urls)

    def close(self) -> None:
        self.client.close()


def check_success(api: Api, job: dict[str, Any]) -> None:
    if job["status"] != "success":
        raise RuntimeError(f"job {job['id']} {job['status']} ({job.get('reason')}):\n"
                           f"{api.logs(job)[-3000:]}")


# -- 1. submit to first log line ---------------------------------------------------------

def first_log_phase(api: Api, jobs: int) -> dict[str, Any]:
    """Sequential jobs; besides the total, when each milestone of a job reached the
    follower (medians, seconds after the POST was sent): where the time goes."""
    manifest = "image: nix\npackages: [coreutils]\ntasks:\n  - first: echo first-line\n"
    seconds: list[float] = []
    milestones: dict[str, list[float]] = {}
    for _ in range(jobs):
        start = time.time()
        job = api.submit(manifest)
        seen = {"submit answered": time.time()}
        for arrival, kind, data in api.events(job["id"]):
            if kind == "job" and data.get("status") == "running":
                seen.setdefault("job running (claimed)", arrival)
            elif kind == "log" and data.get("task") is None:
                seen.setdefault("first setup log line", arrival)
            elif kind == "task" and data.get("status") == "running":
                seen.setdefault("task running", arrival)
            elif kind == "log" and data.get("task") == "first":
                seen.setdefault("first task log line", arrival)
        if "first task log line" not in seen:
            raise RuntimeError(f"job {job['id']} logged nothing for its task")
        check_success(api, api.job(job["id"]))
        seconds.append(seen["first task log line"] - start)
        for name, when in seen.items():
            milestones.setdefault(name, []).append(when - start)
    return {"seconds": seconds, "median": statistics.median(seconds),
            "p95": percentile(seconds, 95),
            "milestones": {k: statistics.median(v) for k, v in sorted(
                milestones.items(), key=lambda kv: statistics.median(kv[1]))}}


def bwrap_first_line(runs: int) -> dict[str, Any]:
    """A bare sandbox: ``bwrap --unshare-all`` start to the ``echo``'s line on stdout."""
    cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/",
           "--proc", "/proc", "--dev", "/dev", "/bin/sh", "-c", "echo first-line"]
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        with subprocess.Popen(cmd, stdout=subprocess.PIPE) as p:
            assert p.stdout is not None
            p.stdout.readline()
            seconds.append(time.perf_counter() - start)
            p.wait()
    return {"seconds": seconds, "median": statistics.median(seconds),
            "p95": percentile(seconds, 95)}


# -- 2. throughput ----------------------------------------------------------------------

def throughput_phase(api: Api, jobs: int) -> dict[str, Any]:
    start = time.monotonic()
    ids = [api.submit(TRIVIAL)["id"] for _ in range(jobs)]
    submitted = time.monotonic() - start
    pending = set(ids)
    failed = []
    while pending:
        time.sleep(0.05)
        for job_id in list(pending):
            job = api.job(job_id)
            if job["status"] in FINAL:
                pending.discard(job_id)
                if job["status"] != "success":
                    failed.append(job_id)
    seconds = time.monotonic() - start
    if failed:
        check_success(api, api.job(failed[0]))
    # How long a job held its slot (claim to finish, server clock).
    held = []
    for job_id in ids:
        job = api.job(job_id)
        held.append((datetime.fromisoformat(job["finished_at"])
                     - datetime.fromisoformat(job["started_at"])).total_seconds())
    return {"jobs": jobs, "seconds": seconds, "submit_seconds": submitted,
            "per_minute": jobs / seconds * 60, "slot_seconds_median": statistics.median(held),
            "slot_seconds_p95": percentile(held, 95)}


def bwrap_throughput(jobs: int, parallel: int) -> dict[str, Any]:
    cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/",
           "--proc", "/proc", "--dev", "/dev", "/bin/sh", "-c", "echo ok"]
    start = time.monotonic()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(lambda _: subprocess.run(cmd, check=True, capture_output=True),
                      range(jobs)))
    seconds = time.monotonic() - start
    return {"jobs": jobs, "seconds": seconds, "per_minute": jobs / seconds * 60}


# -- 3. live log latency ------------------------------------------------------------------

def live_log_phase(api: Api, lines: int, every: float) -> dict[str, Any]:
    # The sleep first lets the follower connect before the first line: every line is
    # then seen live, not replayed from the store.
    # busybox's date has no %N; its adjtimex prints the clock to the microsecond.
    stamp = "adjtimex | awk '/tv_sec/ {s = $2} /tv_usec/ {printf \"%d.%06d\\n\", s, $2}'"
    script = (f"sleep 1; i=0; while [ $i -lt {lines} ]; do {stamp}; sleep {every}; "
              f"i=$((i+1)); done")
    manifest = (f"image: nix\npackages: [busybox]\ntasks:\n  - stamps: |\n"
                f"      set +x\n      {script}\n")
    job = api.submit(manifest)
    latencies: list[float] = []
    chunks = 0
    for arrival, kind, data in api.events(job["id"]):
        if kind != "log" or data.get("task") != "stamps":
            continue
        chunks += 1
        for line in data["text"].splitlines():
            with contextlib.suppress(ValueError):
                latencies.append(arrival - float(line))
    check_success(api, api.job(job["id"]))
    if len(latencies) != lines:
        raise RuntimeError(f"followed {len(latencies)} stamped lines, expected {lines}")
    return {"lines": len(latencies), "chunks": chunks,
            "p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
            "max": max(latencies), "min": min(latencies)}


# -- the run --------------------------------------------------------------------------------

class LoadSampler(threading.Thread):
    """The 1-minute load average every second: how busy the shared machine was."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.samples.append(os.getloadavg()[0])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency-jobs", type=int, default=20)
    parser.add_argument("--throughput-jobs", type=int, default=60)
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--standalone", action="store_true",
                        help="a separate `nixfarm runner` process instead of the embedded one")
    args = parser.parse_args()
    info = machine()
    load = LoadSampler()
    load.start()
    with (temp_dir("nixfarm-jobs-bench-") as work,
          farm(work, args.slots, args.standalone) as (url, token)):
        api = Api(url, token)
        try:
            start = time.monotonic()
            # The first job of each package set composes its nix image: not measured.
            for packages in ("coreutils", "busybox"):
                warm = api.wait(api.submit(TRIVIAL.replace("coreutils", packages))["id"])
                check_success(api, warm)
            warm_s = time.monotonic() - start
            print(f"warm-up jobs: {warm_s:.1f} s", file=sys.stderr)
            first = first_log_phase(api, args.latency_jobs)
            print(f"first log: median {first['median']:.3f} s", file=sys.stderr)
            busy = throughput_phase(api, args.throughput_jobs)
            print(f"throughput: {busy['per_minute']:.0f}/min", file=sys.stderr)
            live = live_log_phase(api, args.lines, 0.05)
            print(f"live log: p99 {live['p99'] * 1000:.0f} ms", file=sys.stderr)
        finally:
            api.close()
    bare_first = bwrap_first_line(args.latency_jobs)
    bare_busy = bwrap_throughput(args.throughput_jobs, args.slots)
    load.stop.set()
    rows = [
        Row(f"submit to first task log line, median of {args.latency_jobs}", "ms",
            first["median"] * 1000, bare_first["median"] * 1000, "bare bwrap echo",
            "< 1000 ms", first["median"] < 1.0),
        Row(f"submit to first task log line, p95 of {args.latency_jobs}", "ms",
            first["p95"] * 1000, bare_first["p95"] * 1000, "bare bwrap echo",
            "< 1000 ms", first["p95"] < 1.0),
        Row(f"trivial jobs per minute, {args.slots} slots, {args.throughput_jobs} jobs", "/min",
            busy["per_minute"], bare_busy["per_minute"], f"bare bwrap echo x{args.slots}",
            ">= 60", busy["per_minute"] >= 60),
        Row(f"sandbox line to SSE follower, p50 of {live['lines']}", "ms", live["p50"] * 1000,
            None, ""),
        Row(f"sandbox line to SSE follower, p99 of {live['lines']}", "ms", live["p99"] * 1000,
            None, "", "< 250 ms", live["p99"] < 0.25),
    ]
    where = "standalone `nixfarm runner`" if args.standalone else "embedded runner"
    print(f"runner: {where}, {args.slots} slots\n")
    print(table(rows))
    load_avg = {"max": max(load.samples, default=0.0),
                "mean": statistics.fmean(load.samples) if load.samples else 0.0}
    print(f"- warm-up jobs (compose the nix images): {warm_s:.1f} s; 1-min load average during "
          f"the run: mean {load_avg['mean']:.2f}, max {load_avg['max']:.2f}")
    print("- first log line, medians of when each step reached the follower: " + ", ".join(
        f"{name} {when * 1000:.0f} ms" for name, when in first["milestones"].items()))
    print(f"- throughput: {busy['jobs']} jobs in {busy['seconds']:.1f} s "
          f"(submitting took {busy['submit_seconds']:.2f} s); "
          f"a job held its slot {busy['slot_seconds_median'] * 1000:.0f} ms (median), "
          f"{busy['slot_seconds_p95'] * 1000:.0f} ms (p95)")
    print(f"- live log: {live['lines']} lines in {live['chunks']} chunks, "
          f"min {live['min'] * 1000:.0f} ms, max {live['max'] * 1000:.0f} ms")
    path = write_json("jobs", {"machine": info, "warmup_s": warm_s, "first_log": first,
                               "bare_first_line": bare_first, "throughput": busy,
                               "bare_throughput": bare_busy, "live_log": live,
                               "load_avg": load_avg, "standalone": args.standalone,
                               "rows": [r.__dict__ for r in rows]})
    print(f"\n{info['date']}, {info['nproc']} x {info['cpu']}, {info['ram_gib']} GiB; "
          f"JSON in {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
