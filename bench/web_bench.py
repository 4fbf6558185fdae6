"""The web benchmark: a job page with a 100 MB log, and the jobs list of 10,000 jobs.

    .venv/bin/python bench/web_bench.py [--log-mb 100] [--jobs 10000] [--runs 3]

One run against a real ``nixfarm up --demo`` (Granian behind its nginx edge), stopping by
itself:

1. a job whose one task prints ``--log-mb`` MB of (coloured) lines, run for real by the
   embedded runner; 10,000 more jobs submitted through the API (not started: the list
   is what is measured, not the runner);
2. time to first byte and to the last byte of the job page and of ``/jobs``, with one
   HTTP client, median of ``--runs``;
3. time to a usable page in headless Chromium (the tests' browser): from navigation to
   the ``load`` event, with the log's last line drawn (the job page renders only the
   tail of a long log until asked), median of ``--runs``.

Baseline, in the same run: Debian's nginx serving, as static files, the same 100 MB
log (what "open the raw log" costs, and what a page that drew the whole log would at
least cost) and a saved copy of the same ``/jobs`` HTML page (the floor for any
server-rendered list of the same size).

Results: a Markdown table on stdout and JSON in ``bench/out/``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Nginx, Row, machine, nixfarm_up, table, temp_dir, write_json
from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS

LINE = "\\033[32mok\\033[0m the quick brown fox jumps over the lazy dog 0123456789"


def first_and_last_byte(url: str, headers: dict[str, str] | None = None
                        ) -> tuple[float, float, int]:
    """Seconds to the first and to the last byte of a GET, and the body's size."""
    with httpx.Client(timeout=600, headers=headers) as client:
        start = time.perf_counter()
        with client.stream("GET", url) as response:
            response.raise_for_status()
            first = None
            size = 0
            for chunk in response.iter_raw():
                if first is None and chunk:
                    first = time.perf_counter() - start
                size += len(chunk)
        return first or 0.0, time.perf_counter() - start, size


def median(runs: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(runs))


def make_jobs(farm: Any, token: str, count: int) -> None:
    manifest = "image: nix\npackages: [busybox]\ntasks:\n  - build: echo ok\n"

    def submit(n: int) -> None:
        with httpx.Client(base_url=farm.url, timeout=120,
                          headers={"Authorization": f"Bearer {token}"}) as client:
            for i in range(n, count, 4):
                r = client.post("/api/v1/jobs", json={
                    "manifest": manifest, "execute": False, "visibility": "public",
                    "tags": [f"repo-{i % 7}", "bench"], "note": f"bench job {i}"})
                r.raise_for_status()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(submit, range(4)))


def big_log_job(farm: Any, token: str, log_mb: int) -> int:
    manifest = ("image: nix\npackages: [busybox]\ntasks:\n  - log: |\n"
                f"      line=$(printf '{LINE}')\n"
                f"      yes \"$line\" | head -c {log_mb * 1024 * 1024}\n")
    with httpx.Client(base_url=farm.url, timeout=120,
                      headers={"Authorization": f"Bearer {token}"}) as client:
        r = client.post("/api/v1/jobs", json={"manifest": manifest, "visibility": "public"})
        r.raise_for_status()
        job_id: int = r.json()["id"]
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            status = client.get(f"/api/v1/jobs/{job_id}").json()["status"]
            if status not in ("pending", "queued", "running"):
                if status != "success":
                    raise RuntimeError(f"the big-log job ended {status}")
                return job_id
            time.sleep(1)
    raise RuntimeError("the big-log job did not finish in 30 minutes")


#: How long a page may take to load in the browser before it counts as "never usable".
BROWSER_LIMIT_S = 120


def browser_load(page: Any, url: str, ready: str | None) -> float:
    """Seconds from navigation to the load event (and ``ready`` drawn, if given);
    infinity past ``BROWSER_LIMIT_S`` (then the tab is reset for the next load)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    start = time.perf_counter()
    try:
        page.goto(url, wait_until="load", timeout=BROWSER_LIMIT_S * 1000)
        if ready is not None:
            page.wait_for_selector(ready, state="attached", timeout=BROWSER_LIMIT_S * 1000)
    except PlaywrightTimeout:
        page.goto("about:blank")
        return float("inf")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log-mb", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    results: dict[str, Any] = {"machine": machine(), "log_mb": args.log_mb,
                               "jobs": args.jobs, "runs": args.runs}
    rows: list[Row] = []
    with temp_dir("nixfarm-web-bench-") as work:
        env = {"NIXFARM_JOBS__LOG_BYTES": str((args.log_mb + 8) * 1024 * 1024),
               "NIXFARM_JOBS__SHUTDOWN_GRACE_SECONDS": "0"}
        with nixfarm_up(work / "data", "--demo", env=env) as farm:
            token = farm.token
            started = time.perf_counter()
            job_id = big_log_job(farm, token, args.log_mb)
            results["big_log_job_seconds"] = time.perf_counter() - started
            started = time.perf_counter()
            make_jobs(farm, token, args.jobs)
            results["submit_seconds"] = time.perf_counter() - started

            # The baseline's files: the very same bytes.
            root = work / "static"
            root.mkdir()
            (root / "nix-cache-info").write_text("StoreDir: /nix/store\n")
            auth = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=farm.url, headers=auth, timeout=600) as client:
                log = client.get(f"/jobs/{job_id}/tasks/log/log.txt")  # the task's log
                log.raise_for_status()
                (root / "log.txt").write_bytes(log.content)
                listing = client.get("/jobs", headers={"Accept-Encoding": "identity"})
                (root / "jobs.html").write_bytes(listing.content)
            results["log_bytes"] = len(log.content)
            results["jobs_page_bytes"] = len(listing.content)

            job_url = f"{farm.url}/jobs/{job_id}"
            with Nginx(root, work / "nginx").running() as nginx:
                job_name = f"job page, {args.log_mb} MB log"
                list_name = f"jobs list, {args.jobs:,} jobs"
                pairs = {job_name: (job_url, f"{nginx.url}/log.txt"),
                         list_name: (f"{farm.url}/jobs", f"{nginx.url}/jobs.html")}
                for name, (ours, theirs) in pairs.items():
                    for label, index in (("first byte", 0), ("last byte", 1)):
                        def get_ours(u: str = ours, i: int = index) -> float:
                            return first_and_last_byte(u, auth)[i]

                        def get_theirs(u: str = theirs, i: int = index) -> float:
                            return first_and_last_byte(u)[i]

                        mine = median(args.runs, get_ours)
                        base = median(args.runs, get_theirs)
                        rows.append(Row(f"{name}: {label}", "ms", mine * 1000, base * 1000,
                                        "nginx, static file"))
                with sync_playwright() as playwright:
                    browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                                         headless=True, args=CHROMIUM_ARGS)
                    context = browser.new_context()
                    page = context.new_page()
                    page.goto(f"{farm.url}/sign-in?next=/")
                    page.fill("#token", token)
                    page.click("button[type=submit]:has-text('Sign in with a token')")
                    page.wait_for_selector("#signed-in-as")
                    browsed = {
                        f"{job_name}: usable in Chromium": (
                            job_url, ".log .line:last-child", f"{nginx.url}/log.txt"),
                        f"{list_name}: usable in Chromium": (
                            f"{farm.url}/jobs", "table", f"{nginx.url}/jobs.html"),
                    }
                    for name, (ours, ready, theirs) in browsed.items():
                        def load_ours(u: str = ours, r: str = ready) -> float:
                            return browser_load(page, u, r)

                        def load_theirs(u: str = theirs) -> float:
                            return browser_load(page, u, None)

                        mine = median(args.runs, load_ours)
                        base = median(args.runs, load_theirs)
                        late = f"not loaded in {BROWSER_LIMIT_S} s"
                        rows.append(Row(name, "ms", mine * 1000,
                                        base * 1000 if base != float("inf") else None,
                                        "nginx, static file",
                                        note=late if float("inf") in (mine, base) else ""))
                    context.close()
                    browser.close()
    results["rows"] = rows
    print(table(rows))
    for row in rows:
        if row.note:
            print(f"{row.name}: {row.note}")
    print(f"\nlog {results['log_bytes']} bytes (job ran in {results['big_log_job_seconds']:.0f} s);"
          f" /jobs page {results['jobs_page_bytes']} bytes; {args.jobs} jobs submitted in "
          f"{results['submit_seconds']:.0f} s")
    print(f"results: {write_json('web', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
