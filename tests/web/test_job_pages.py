"""Job pages over plain HTTP: the home page, filters and paging, log tails and colours,
and the forms that change jobs (CSRF, who may)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

from tests.fixtures.farm import RunningFarm
from tests.fixtures.jobs import wait_job
from tests.web.conftest import WEB_WAIT, Visitor, make_token, submit


def _ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr class="job" data-id="(\d+)"', html)]


def test_filters_and_paging(web_farm: RunningFarm) -> None:
    tag = f"tag-{uuid.uuid4().hex[:6]}"
    alice = make_token(web_farm, "jobs:submit", name=f"alice-{tag}")
    bob = make_token(web_farm, "jobs:submit", name=f"bob-{tag}")
    mine = [submit(web_farm, alice, "true", tags=[tag], execute=False)["id"] for _ in range(52)]
    theirs = submit(web_farm, bob, "true", tags=[tag], execute=False)["id"]
    other = submit(web_farm, bob, "true", tags=["other"], execute=False)["id"]

    first = web_farm.get("/jobs", token="", params={"tag": tag})
    assert first.status_code == 200
    assert _ids(first.text) == [theirs, *reversed(mine)][:50]
    older = re.search(r'href="([^"]+)" id="older"', first.text)
    assert older, "a full page links to the older jobs"
    second = web_farm.get(older.group(1).replace("&amp;", "&"), token="")
    assert _ids(second.text) == list(reversed(mine))[49:]
    assert 'id="older"' not in second.text and 'id="newest"' in second.text

    by_owner = web_farm.get("/jobs", token="", params={"owner": f"bob-{tag}"})
    assert _ids(by_owner.text) == [other, theirs]
    pending = web_farm.get("/jobs", token="", params={
        "owner": f"bob-{tag}", "status": "pending", "tag": "other", "image": "nix"})
    assert _ids(pending.text) == [other]
    assert _ids(web_farm.get("/jobs", token="", params={
        "owner": f"bob-{tag}", "image": "no-such-image"}).text) == []
    today = datetime.now(UTC).date()
    for since, until, expected in ((today, today, [other, theirs]),
                                   (today + timedelta(days=1), None, []),
                                   (None, today - timedelta(days=1), [])):
        params = {"owner": f"bob-{tag}", "since": since.isoformat() if since else "",
                  "until": until.isoformat() if until else "", "status": ""}
        assert _ids(web_farm.get("/jobs", token="", params=params).text) == expected, params
    bad = web_farm.get("/jobs", token="", params={"since": "yesterday"})
    assert bad.status_code == 400 and "since" in bad.text and "<html" in bad.text
    assert web_farm.get("/jobs", token="", params={"status": "lost"}).status_code == 400
    # The API filters the same way.
    api = web_farm.get("/api/v1/jobs", params={"owner": f"bob-{tag}", "tag": "other"}).json()
    assert [j["id"] for j in api["jobs"]] == [other]


def test_the_home_page_counts_what_the_viewer_may_see(web_farm: RunningFarm,
                                                       visitor: Visitor) -> None:
    owner = make_token(web_farm, "jobs:submit")
    failing = submit(web_farm, owner, "echo doomed; exit 3")
    done = wait_job(web_farm, failing["id"], {"failed", "success"}, WEB_WAIT)
    assert done["status"] == "failed"
    hidden = submit(web_farm, owner, "exit 4", visibility="private")
    wait_job(web_farm, hidden["id"], {"failed"}, WEB_WAIT)
    home = visitor.get("/")
    assert home.status_code == 200
    failures = home.text.split('id="failures"')[1].split("</table>")[0]
    assert f'href="/jobs/{failing["id"]}"' in failures
    assert f'href="/jobs/{hidden["id"]}"' not in failures
    assert 'id="runners"' not in home.text  # runners are the admin's to see
    admin = web_farm.get("/")  # the admin token, as a bearer token
    assert 'id="runners"' in admin.text and "embedded" in admin.text
    assert f'href="/jobs/{hidden["id"]}"' in admin.text


def test_a_long_log_is_drawn_from_its_tail_with_true_line_numbers(
        web_farm: RunningFarm) -> None:
    owner = make_token(web_farm, "jobs:submit")
    lines = 30000  # about 1 MiB, four times what a page draws at first
    job = submit(web_farm, owner, f"awk 'BEGIN {{ for (i = 1; i <= {lines}; i++) "
                 "printf \"row %06d of the long log\\n\", i }'")
    assert wait_job(web_farm, job["id"], {"success", "failed"}, WEB_WAIT)["status"] == "success"
    raw = web_farm.get(f"/jobs/{job['id']}/tasks/work/log.txt", token="").text.split("\n")
    page = web_farm.get(f"/jobs/{job['id']}", token="").text
    numbered = re.findall(r'<div class="line" id="task-work-L(\d+)"><a class="n" '
                          r'href="#task-work-L\d+">\d+</a>([^<]*)</div>', page)
    assert "Show the whole log" in page
    assert 1000 < len(numbered) < lines / 2
    assert int(numbered[0][0]) > 1
    for number, text in numbered:
        assert raw[int(number) - 1] == text
    assert numbered[-1][1] == f"row {lines:06d} of the long log"
    whole = web_farm.get(f"/jobs/{job['id']}", token="", params={"full": "task-work"}).text
    assert 'id="task-work-L1"' in whole and f'id="task-work-L{lines + 1}"' in whole


def test_colours_are_spans_and_escapes_are_gone(web_farm: RunningFarm) -> None:
    owner = make_token(web_farm, "jobs:submit")
    job = submit(web_farm, owner, "printf '\\033[1;32mgreen\\033[0m plain \\033[41mred\\n'")
    wait_job(web_farm, job["id"], {"success"}, WEB_WAIT)
    page = web_farm.get(f"/jobs/{job['id']}", token="").text
    assert ('<span class="ansi-bold fg-32">green</span> plain '
            '<span class="bg-41">red</span>') in page
    assert "\x1b" not in page


def test_changing_a_job_takes_a_csrf_token_and_the_right_to(
        web_farm: RunningFarm, visitor: Visitor) -> None:
    owner = make_token(web_farm, "jobs:submit")
    job = submit(web_farm, owner, "true", execute=False)
    page = f"/jobs/{job['id']}"
    visitor.sign_in(make_token(web_farm, "jobs:submit"))  # someone else
    assert 'id="cancel"' not in visitor.get(page).text
    refused = visitor.post(f"{page}/cancel", {}, form_on=page)
    assert refused.status_code == 403 and "not yours" in refused.text
    visitor.post("/sign-out", {}, form_on="/jobs")
    visitor.sign_in(owner)
    assert 'id="cancel"' in visitor.get(page).text
    forged = visitor.http.post(f"{page}/cancel", data={"csrf": "x" * 43})
    assert forged.status_code == 403
    assert web_farm.get(f"/api/v1{page}").json()["status"] == "pending"
    cancelled = visitor.post(f"{page}/cancel", {}, form_on=page)
    assert cancelled.status_code == 303 and cancelled.headers["location"] == page
    assert web_farm.get(f"/api/v1{page}").json()["status"] == "cancelled"
    broken = visitor.post(f"{page}/edit", {"manifest": "image: nix\ntasks: 7\n"}, form_on=page)
    assert broken.status_code == 400 and 'id="problem"' in broken.text
    assert "tasks: 7" in broken.text  # what the person wrote, kept to fix
    anonymous = web_farm.get(f"{page}/edit", token="")
    assert anonymous.status_code == 401 and "/sign-in?next=" in anonymous.text


def test_an_unlisted_jobs_pages_carry_its_key(web_farm: RunningFarm) -> None:
    owner = make_token(web_farm, "jobs:submit")
    job = submit(web_farm, owner, "echo shared", visibility="unlisted")
    wait_job(web_farm, job["id"], {"success"}, WEB_WAIT)
    assert web_farm.get(f"/jobs/{job['id']}", token="").status_code == 404
    page = web_farm.get(f"/jobs/{job['id']}", token="", params={"key": job["key"]})
    assert page.status_code == 200 and "shared" in page.text
    raw = re.search(r'href="(/jobs/\d+/tasks/work/log\.txt\?key=[^"]+)"', page.text)
    assert raw and web_farm.get(raw.group(1), token="").text.endswith("shared\n")
