"""The site's foundation over plain HTTP: sign in and out, cookies, CSRF, error pages."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.fixtures.farm import RunningFarm, running_farm
from tests.web.conftest import Visitor, make_token, submit


def test_sign_in_sets_a_session_cookie_that_is_the_tokens_principal(
        web_farm: RunningFarm, visitor: Visitor) -> None:
    token = make_token(web_farm, "jobs:submit", name="carol")
    signed = visitor.sign_in(token)
    cookie = signed.headers["set-cookie"]
    assert cookie.startswith("nixfarm_session=nfs_")
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # the farm is served over plain HTTP here
    assert token not in cookie  # the browser keeps the session, never the token
    home = visitor.get("/jobs")
    assert 'id="signed-in-as">carol<' in home.text
    assert home.headers["x-frame-options"] == "DENY"
    first = visitor.http.cookies["nixfarm_session"]
    visitor.sign_in(token)  # again: the first session ends, it is not left behind
    assert visitor.http.cookies["nixfarm_session"] != first
    replay = web_farm.get("/jobs", token="", headers={"Cookie": f"nixfarm_session={first}"})
    assert 'id="signed-in-as"' not in replay.text


def test_a_wrong_token_is_refused_on_the_sign_in_page(visitor: Visitor) -> None:
    r = visitor.post("/sign-in", {"token": "nf_not-a-token"})
    assert r.status_code == 401
    assert "unknown, revoked or expired" in r.text
    assert "nixfarm_session" not in r.headers.get("set-cookie", "")


def test_forms_without_the_csrf_token_are_refused(web_farm: RunningFarm,
                                                   visitor: Visitor) -> None:
    token = make_token(web_farm, "jobs:submit")
    visitor.get("/sign-in")  # the anonymous CSRF cookie
    for data in ({"token": token}, {"token": token, "csrf": "forged-value-of-enough-length"}):
        r = visitor.http.post("/sign-in", data=data)
        assert r.status_code == 403, r.text
        assert "CSRF" in r.text and "<html" in r.text
    visitor.sign_in(token)
    # A signed-in form needs the session's own token, not the anonymous cookie's.
    anonymous = visitor.http.cookies.get("nixfarm_csrf")
    assert anonymous
    r = visitor.http.post("/sign-out", data={"csrf": anonymous})
    assert r.status_code == 403
    assert 'id="signed-in-as"' in visitor.get("/jobs").text


def test_sign_out_ends_the_session_on_the_server(web_farm: RunningFarm,
                                                  visitor: Visitor) -> None:
    visitor.sign_in(make_token(web_farm, "jobs:submit"))
    stolen = visitor.http.cookies.get("nixfarm_session")
    assert stolen
    out = visitor.post("/sign-out", {}, form_on="/jobs")
    assert out.status_code == 303
    assert 'id="sign-in"' in visitor.get("/jobs").text
    # The old cookie, replayed (as a thief would), is no longer anyone.
    replay = web_farm.get("/jobs", token="", headers={"Cookie": f"nixfarm_session={stolen}"})
    assert 'id="sign-in"' in replay.text and 'id="signed-in-as"' not in replay.text


def test_a_revoked_tokens_sessions_end_with_it(web_farm: RunningFarm, visitor: Visitor) -> None:
    name = "revoked-soon"
    token = make_token(web_farm, "jobs:submit", name=name)
    visitor.sign_in(token)
    assert f'id="signed-in-as">{name}<' in visitor.get("/jobs").text
    listed = web_farm.get("/api/v1/tokens").json()
    token_id = next(t["id"] for t in listed if t["name"] == name)
    assert web_farm.request("DELETE", f"/api/v1/tokens/{token_id}").status_code in (200, 204)
    deadline = time.monotonic() + 10  # the memo of token ids lasts about a second
    while f'id="signed-in-as">{name}<' in visitor.get("/jobs").text:
        assert time.monotonic() < deadline, "the session outlived its token"
        time.sleep(0.3)


def test_error_pages_are_pages_and_the_api_keeps_json(web_farm: RunningFarm) -> None:
    missing = web_farm.get("/no/such/page", token="")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("text/html")
    assert "Not found" in missing.text and 'href="/static/site.css"' in missing.text
    api = web_farm.get("/api/v1/no/such/thing", token="")
    assert api.status_code == 404 and api.json()["error"]["type"] == "NotFound"
    oci = web_farm.get("/v2/no-such-image/manifests/latest", token="")
    assert "errors" in oci.json()
    # A bad bearer token on a page: 401, a page with a sign-in link, no browser prompt.
    bad = web_farm.get("/jobs", token="nf_wrong")
    assert bad.status_code == 401
    assert "www-authenticate" not in bad.headers
    assert 'href="/sign-in?next=/jobs"' in bad.text


def test_a_private_job_is_seen_only_by_who_may(web_farm: RunningFarm, visitor: Visitor) -> None:
    owner = make_token(web_farm, "jobs:submit", name="owner")
    job = submit(web_farm, owner, "echo private", visibility="private")
    assert visitor.get(f"/jobs/{job['id']}").status_code == 404
    visitor.sign_in(make_token(web_farm, "jobs:submit", name="other"))
    assert visitor.get(f"/jobs/{job['id']}").status_code == 404
    visitor.post("/sign-out", {}, form_on="/jobs")
    visitor.sign_in(owner)
    seen = visitor.get(f"/jobs/{job['id']}")
    assert seen.status_code == 200 and f"Job #{job['id']}" in seen.text


def test_cookies_are_secure_when_the_farm_is_served_over_tls(
        request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    data = tmp_path_factory.mktemp("tls") / "data"
    env = {"NIXFARM_PUBLIC_URL": "https://farm.example.org",
           "NIXFARM_JOBS__EMBEDDED_RUNNER_SLOTS": "0"}
    with running_farm("sqlite", request, data, env) as farm, \
            httpx.Client(base_url=farm.url, timeout=60) as http:
        first = http.get("/sign-in")
        assert "Secure" in first.headers["set-cookie"]
        csrf = first.headers["set-cookie"].split(";")[0].partition("=")[2]
        # A browser sends a Secure cookie only over TLS; this test is the TLS proxy.
        signed = http.post("/sign-in", data={"csrf": csrf, "token": farm.token},
                           headers={"Cookie": f"nixfarm_csrf={csrf}"})
        assert signed.status_code == 303, signed.text
        cookie = signed.headers["set-cookie"]
        assert cookie.startswith("nixfarm_session=") and "Secure" in cookie
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie
