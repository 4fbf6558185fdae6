"""Signing in through OpenID Connect, against the small provider of ``oidc_provider``:
in a browser, and step by step over HTTP where each check of the flow is attacked."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.fixtures.farm import RunningFarm, free_port
from tests.web.conftest import make_token, submit
from tests.web.oidc_provider import Provider

GRACE = "grace@example.org"


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    made = Provider(people={GRACE: True, "mallory@example.org": False,
                            "nobody@example.org": True})
    made.start()
    yield made
    made.stop()


@pytest.fixture(scope="module")
def oidc_farm(provider: Provider, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[RunningFarm]:
    data = tmp_path_factory.mktemp("oidc") / "data"
    data.mkdir()
    (data / "nixfarm.toml").write_text(
        "[web.oidc]\n"
        f'issuer = "{provider.issuer}"\n'
        f'client_id = "{provider.client_id}"\n'
        f'client_secret = "{provider.client_secret}"\n'
        'claim = "email"\n'
        "[web.oidc.principals]\n"
        f'"{GRACE}" = "grace"\n'
        '"mallory@example.org" = "grace"\n')
    running = RunningFarm(data, free_port(), extra_env={
        "NIXFARM_JOBS__EMBEDDED_RUNNER_SLOTS": "0"})
    running.start("--demo")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def grace(oidc_farm: RunningFarm) -> str:
    """The token whose scopes grace gets when she signs in (the one called "grace")."""
    return make_token(oidc_farm, "jobs:submit", name="grace")


def _flow(farm: RunningFarm, provider: Provider, email: str, client: httpx.Client,
          state: str | None = None) -> httpx.Response:
    """Start a sign-in, sign in at the provider as ``email``, and return the farm's
    answer to the callback (with ``state`` in place of the real one, if given)."""
    start = client.get(f"{farm.url}/sign-in/oidc", params={"next": "/jobs"})
    assert start.status_code == 302, start.text
    authorize = start.headers["location"]
    assert authorize.startswith(provider.issuer + "/authorize?")
    query = {k: v[0] for k, v in parse_qs(urlsplit(authorize).query).items()}
    assert query["code_challenge_method"] == "S256" and query["nonce"] and query["state"]
    approved = client.post(f"{provider.issuer}/authorize", data={**query, "email": email})
    assert approved.status_code == 302
    back = approved.headers["location"]
    if state is not None:
        back = back.replace(f"state={query['state']}", f"state={state}")
    return client.get(back)


def test_sign_in_through_the_provider_in_a_browser(oidc_farm: RunningFarm, grace: str,
                                                   provider: Provider, page: Any) -> None:
    hers = submit(oidc_farm, grace, "true", visibility="private", execute=False)
    # Another token's private job: grace's sign-in holds the token called "grace".
    token = make_token(oidc_farm, "jobs:submit", name="grace-private")
    private = submit(oidc_farm, token, "true", visibility="private", execute=False)
    page.goto(f"{oidc_farm.url}/sign-in?next=/jobs")
    page.click("#oidc-sign-in")
    page.wait_for_url(f"{provider.issuer}/authorize?*")
    page.fill("#email", GRACE)
    page.click("#approve")
    page.wait_for_url(f"{oidc_farm.url}/jobs")
    assert page.text_content("#signed-in-as") == "grace"
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["nixfarm_session"]["httpOnly"] and "nixfarm_oidc" not in cookies
    # grace's token sees its own jobs, not another token's private one.
    page.goto(f"{oidc_farm.url}/jobs/{private['id']}")
    assert page.text_content("h1") == "Not found"
    page.goto(f"{oidc_farm.url}/jobs/{hers['id']}")
    assert page.text_content("h1").startswith(f"Job #{hers['id']}")
    page.click("text=Sign out")
    page.wait_for_selector("#sign-in")
    # The verifier reached the token endpoint (the provider checked it against the
    # challenge, and the client's secret).
    assert provider.token_requests[-1]["code_verifier"]


def test_the_flows_checks_refuse_what_they_must(oidc_farm: RunningFarm, grace: str,
                                                provider: Provider) -> None:
    with httpx.Client(timeout=30) as client:
        done = _flow(oidc_farm, provider, GRACE, client)
        assert done.status_code == 303 and done.headers["location"] == "/jobs"
        assert "nixfarm_session=nfs_" in done.headers["set-cookie"]
        assert 'id="signed-in-as">grace<' in client.get(f"{oidc_farm.url}/jobs").text
    for tamper, words in (("nonce", "nonce"), ("audience", "refused"),
                          ("signature", "refused")):
        with httpx.Client(timeout=30) as client:
            provider.tamper = tamper
            refused = _flow(oidc_farm, provider, GRACE, client)
            assert refused.status_code == 401, (tamper, refused.text)
            assert words in refused.text and "nixfarm_session" not in refused.headers.get(
                "set-cookie", "")
    with httpx.Client(timeout=30) as client:
        forged = _flow(oidc_farm, provider, GRACE, client, state="forged-state")
        assert forged.status_code == 401 and "state does not match" in forged.text
    with httpx.Client(timeout=30) as client:  # a callback in a browser that did not start it
        start = client.get(f"{oidc_farm.url}/sign-in/oidc")
        query = {k: v[0] for k, v in parse_qs(urlsplit(start.headers["location"]).query).items()}
        approved = client.post(f"{provider.issuer}/authorize", data={**query, "email": GRACE})
    other = httpx.get(approved.headers["location"], timeout=30)
    assert other.status_code == 401 and "another browser" in other.text
    with httpx.Client(timeout=30) as client:
        unverified = _flow(oidc_farm, provider, "mallory@example.org", client)
        assert unverified.status_code == 403 and "vouch" in unverified.text
    with httpx.Client(timeout=30) as client:
        stranger = _flow(oidc_farm, provider, "nobody@example.org", client)
        assert stranger.status_code == 403 and "may not sign in" in stranger.text


def test_no_provider_no_oidc(web_farm: RunningFarm) -> None:
    assert 'id="oidc-sign-in"' not in web_farm.get("/sign-in", token="").text
    assert web_farm.get("/sign-in/oidc", token="").status_code == 404
