"""A job's page in a real browser: following the log live through a dropped connection,
cancelling, re-running (as is and edited), and private jobs only for who may see them."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from tests.fixtures.farm import RunningFarm
from tests.fixtures.jobs import wait_job
from tests.fixtures.proxy import FlakyProxy
from tests.web.conftest import WEB_WAIT, browser_sign_in, make_token, submit

#: The lines of a log as the page shows them, each without its line number.
_PAGE_LINES = """(anchor) => Array.from(document.querySelectorAll(
    `.log[data-anchor="${anchor}"] .line`)).map((line) => [
        line.id, line.textContent.slice(line.firstChild.textContent.length)])"""


def page_lines(page: Any, anchor: str) -> list[tuple[str, str]]:
    return [(i, t) for i, t in page.evaluate(_PAGE_LINES, anchor)]


def test_the_log_follows_live_and_resumes_without_loss_or_repeats(
        web_farm: RunningFarm, page: Any,
        flaky_proxy: Callable[[int], FlakyProxy]) -> None:
    owner = make_token(web_farm, "jobs:submit")
    count = 40
    job = submit(web_farm, owner, f"for i in $(seq 1 {count}); do printf 'tick %03d\\n' $i; "
                 "sleep 0.4; done")
    wait_job(web_farm, job["id"], {"running"}, WEB_WAIT)
    # The browser reaches the farm through a proxy that the test can cut.
    proxy = flaky_proxy(web_farm.port)
    page.goto(f"{proxy.url}/jobs/{job['id']}")
    page.wait_for_function("document.getElementById('job').dataset.followed === 'live'")
    drawn = len(page_lines(page, "task-work"))

    def ticks() -> list[str]:
        return [t for _, t in page_lines(page, "task-work") if re.fullmatch(r"tick \d{3}", t)]

    # Lines arrive while the page is open: it follows the log live.
    page.wait_for_function("(n) => document.querySelectorAll("
                           "'.log[data-anchor=\"task-work\"] .line').length > n + 3", arg=drawn)
    # The connection drops mid-stream; the browser reconnects by itself (Last-Event-ID).
    proxy.cut()
    page.wait_for_function("window.nixfarmLog.opened >= 2", timeout=60_000)
    seen = len(ticks())
    assert seen < count, "the job ended before the connection was cut: make it slower"
    # And the page's own reopening (from the last event's id) resumes as well.
    page.wait_for_function("(n) => document.querySelectorAll("
                           "'.log[data-anchor=\"task-work\"] .line').length > n", arg=seen)
    page.evaluate("window.nixfarmLog.reconnect()")
    page.wait_for_function("document.getElementById('job').dataset.followed === 'ended'",
                           timeout=120_000)
    assert page.evaluate("window.nixfarmLog.opened") >= 3
    assert ticks() == [f"tick {i:03d}" for i in range(1, count + 1)]
    # Every line once, in order, numbered 1..n: exactly the raw log.
    raw = web_farm.get(f"/api/v1/jobs/{job['id']}/tasks/work/log").text
    lines = page_lines(page, "task-work")
    assert [t for _, t in lines] == raw.rstrip("\n").split("\n")
    assert [i for i, _ in lines] == [f"task-work-L{n}" for n in range(1, len(lines) + 1)]
    assert page.text_content("#status") == "success"
    assert page.text_content("#status-work") == "success"


def test_cancel_then_re_run_as_is_and_edited(web_farm: RunningFarm, page: Any) -> None:
    owner = make_token(web_farm, "jobs:submit", name="erin")
    job = submit(web_farm, owner, "echo started; sleep 600")
    browser_sign_in(page, web_farm, owner, f"/jobs/{job['id']}")
    page.wait_for_selector("#task-work-L1", timeout=120_000)
    page.wait_for_function("document.querySelector('.log[data-anchor=\"task-work\"]')"
                           ".textContent.includes('started')", timeout=120_000)
    page.click("#cancel")
    page.wait_for_selector("#status.cancelled")
    assert web_farm.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "cancelled"
    assert page.query_selector("#cancel") is None  # nothing left to cancel

    page.click("#rerun")
    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    again = int(page.url.rsplit("/", 1)[1])
    assert again != job["id"]
    assert page.text_content("#manifest") == web_farm.get(
        f"/api/v1/jobs/{job['id']}/manifest").text
    rerun = web_farm.get(f"/api/v1/jobs/{again}").json()
    assert rerun["owner"] == "erin" and rerun["visibility"] == job["visibility"]
    page.click("#cancel")
    page.wait_for_selector("#status.cancelled")

    page.click("#edit")
    manifest = page.input_value("#manifest")
    page.fill("#manifest", manifest.replace("sleep 600", "echo edited"))
    page.click("button:has-text('Submit as a new job')")
    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    edited = int(page.url.rsplit("/", 1)[1])
    assert edited not in (job["id"], again)
    assert "echo edited" in page.text_content("#manifest")
    done = wait_job(web_farm, edited, {"success", "failed"}, WEB_WAIT)
    assert done["status"] == "success"
    page.reload()
    assert "edited" in page.text_content('.log[data-anchor="task-work"]')


def test_a_private_job_appears_only_when_signed_in(web_farm: RunningFarm, page: Any) -> None:
    owner = make_token(web_farm, "jobs:submit", name="frank")
    job = submit(web_farm, owner, "echo secret-work", visibility="private", execute=False)
    url = f"{web_farm.url}/jobs/{job['id']}"
    page.goto(url)
    assert page.text_content("h1") == "Not found"
    page.goto(f"{web_farm.url}/jobs")
    assert page.query_selector(f"tr.job[data-id='{job['id']}']") is None
    page.click("#sign-in")
    page.fill("#token", owner)
    page.click("button:has-text('Sign in with a token')")
    page.wait_for_url(f"{web_farm.url}/jobs")  # back where the person was
    assert page.query_selector(f"tr.job[data-id='{job['id']}']") is not None
    page.goto(url)
    assert page.text_content("h1").startswith(f"Job #{job['id']}")
    page.click("text=Sign out")
    page.wait_for_selector("#sign-in")
    page.goto(url)
    assert page.text_content("h1") == "Not found"
    assert "nixfarm_session" not in {c["name"] for c in page.context.cookies()}


def test_a_finished_job_reads_without_javascript(web_farm: RunningFarm, browser: Any) -> None:
    manifest = ("image: nix\npackages: [busybox]\ntasks:\n"
                "  - build: |\n      mkdir -p out\n      echo built > out/result.txt\n"
                "      printf '\\033[32mok\\033[0m\\n'\n"
                "  - check: |\n      cat out/result.txt\n"
                "artifacts:\n  - out/result.txt\n")
    r = web_farm.request("POST", "/api/v1/jobs", json={"manifest": manifest,
                                                       "visibility": "public"})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    assert wait_job(web_farm, job_id, {"success", "failed"}, WEB_WAIT)["status"] == "success"
    context = browser.new_context(java_script_enabled=False, viewport={"width": 390,
                                                                       "height": 844})
    try:
        raw = web_farm.get(f"/jobs/{job_id}/tasks/build/log.txt", token="").text
        n = raw.split("\n").index("\x1b[32mok\x1b[0m") + 1
        page = context.new_page()
        page.goto(f"{web_farm.url}/jobs/{job_id}#task-build-L{n}")
        assert page.text_content("#status") == "success"
        assert page.text_content("#status-check") == "success"
        # The line of the permalink is the one the browser points at (CSS :target).
        assert page.evaluate("document.querySelector(':target').id") == f"task-build-L{n}"
        assert page.text_content(f"#task-build-L{n} .fg-32") == "ok"
        assert "built" in page.text_content('.log[data-anchor="task-check"]')
        # Each task's section folds (a <details>, no script needed).
        assert page.is_visible("#task-check-L1")
        page.click("#log-task-check > summary")
        assert not page.is_visible("#task-check-L1")
        href = page.get_attribute("#artifacts a", "href")
        assert href is not None and web_farm.get(href, token="").text == "built\n"
        # Nothing overflows a phone's width but the log's own lines.
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, width
    finally:
        context.close()
