"""The builder benchmark: a queued job to its builder enrolled and to its first task line.

    .venv/bin/python bench/builder_bench.py [--runs 1]

A real ``nixfarm up --demo`` with one ``local`` pool (one instance at a time) and no
embedded runner; the netboot image is made first (not timed: a farm makes it when it
starts). Each run submits an ``image: nix`` job whose task prints ``first`` and
measures, through the public API: the job's submission to its builder's creation, to
the builder's enrollment (``enrolled_at``: kernel, initramfs, bootstrap, the one-time
token traded), and to the first line of the task's log (the runner started, its
nix-daemon, the image composed, the sandbox booted). The accelerator is the local
provider's (KVM where it works, TCG here). Beside it, the warm-runner figure: the same
job on the embedded runner of another farm (submit to the first task line).

Results: a Markdown table on stdout and JSON in ``bench/out/``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Row, machine, nixfarm_up, table, write_json
from tests.fixtures.farm import RunningFarm

MANIFEST = "image: nix\npackages: [coreutils]\ntasks:\n  - first: echo first\n"
CONFIG = """\
[jobs]
embedded_runner_slots = 0

[builders]
interval_seconds = 1

[[builders.pools]]
name = "bench"
provider = "local"
plan = "2c-2048m-4g"
max_instances = 1
boot_timeout_seconds = 900
"""


def _when(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _first_line(farm: RunningFarm, job: dict[str, Any], started: float,
                seconds: float) -> float:
    url = job["tasks"][0]["log_url"]
    while time.monotonic() - started < seconds:
        if "first" in farm.get(url).text:
            return time.monotonic() - started
        time.sleep(0.1)
    raise RuntimeError(f"job {job['id']} printed nothing in {seconds} s")


def builder_run(farm: RunningFarm) -> dict[str, float]:
    started = time.monotonic()
    submitted = time.time()
    r = farm.request("POST", "/api/v1/jobs", json={"manifest": MANIFEST})
    r.raise_for_status()
    job = r.json()
    line = _first_line(farm, job, started, 900)
    builders = [b for b in farm.get("/api/v1/builders?all=true").json()
                if b["last_job_id"] == job["id"] or b["state"] != "destroyed"]
    builder = max(builders, key=lambda b: b["id"])
    deadline = time.monotonic() + 120
    while farm.get(f"/api/v1/jobs/{job['id']}").json()["status"] not in ("success", "failed"):
        if time.monotonic() > deadline:
            raise RuntimeError("the job did not end")
        time.sleep(0.5)
    return {"created": _when(builder["created_at"]) - submitted,
            "enrolled": _when(builder["enrolled_at"]) - submitted,
            "first_line": line}


def warm_run(farm: RunningFarm) -> float:
    started = time.monotonic()
    r = farm.request("POST", "/api/v1/jobs", json={"manifest": MANIFEST})
    r.raise_for_status()
    return _first_line(farm, r.json(), started, 120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nixfarm-builder-bench-") as work:
        data = Path(work) / "builders"
        data.mkdir()
        (data / "nixfarm.toml").write_text(CONFIG)
        with nixfarm_up(data, "--demo") as farm:
            deadline = time.monotonic() + 600
            while not list((data / "netboot").glob("*/initrd")):
                if time.monotonic() > deadline:
                    raise RuntimeError("the netboot image was not made in 600 s")
                time.sleep(1)
            runs = [builder_run(farm) for _ in range(args.runs)]
            accel = ""
            for meta in (data / "builders" / "local").glob("*/meta.json"):
                accel = meta.read_text()
        warm_dir = Path(work) / "warm"
        with nixfarm_up(warm_dir, "--demo") as farm:
            warm_run(farm)  # composes the image: not timed
            warm = [warm_run(farm) for _ in range(5)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    rows = [
        Row("queued job to builder created", "s", med["created"], None, ""),
        Row("queued job to builder enrolled", "s", med["enrolled"], None, ""),
        Row("queued job to first task line (builder)", "s", med["first_line"],
            statistics.median(warm), "warm embedded runner"),
    ]
    print(table(rows))
    print(write_json("builder", {"machine": machine(), "runs": runs, "warm": warm,
                                 "accelerator": accel}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
