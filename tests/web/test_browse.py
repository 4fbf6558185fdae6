"""Caches, registry, runners, tokens, secrets and badges pages over plain HTTP, against a
real demo farm: what each principal sees, the forms and their CSRF protection."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.fixtures.farm import RunningFarm
from tests.fixtures.jobs import wait_job
from tests.fixtures.nixenv import Nix
from tests.web.conftest import WEB_WAIT, Visitor, make_token, submit


def _push_hello(farm: RunningFarm, nix: Nix, cache: str) -> tuple[str, str]:
    """Push the demo ``hello`` (and its busybox) into ``cache``; (hello, busybox)."""
    hello = nix.build("hello")
    farm.cli("push", "--cache", cache, hello)
    refs = nix.run("nix-store", "--query", "--references", hello).stdout.split()
    busybox = next(r for r in refs if r.endswith("-busybox"))
    return hello, busybox


def _hash(path: str) -> str:
    return path.rsplit("/", 1)[-1][:32]


def test_cache_page_shows_key_lines_size_search_and_paths(web_farm: RunningFarm,
                                                          nix: Nix) -> None:
    name, public_key = web_farm.create_cache()
    hello, busybox = _push_hello(web_farm, nix, name)
    listed = web_farm.get("/caches", "")
    assert f'href="/caches/{name}"' in listed.text
    page = web_farm.get(f"/caches/{name}", "")
    assert page.status_code == 200
    assert f'<code id="public-key">{public_key}</code>' in page.text
    conf = re.search(r'<pre class="snippet" id="nix-conf" tabindex="0">(.*?)</pre>',
                     page.text, re.S)
    assert conf is not None
    assert conf.group(1).splitlines() == [
        f"extra-substituters = {web_farm.url}/cache/{name}",
        f"extra-trusted-public-keys = {public_key}"]
    assert '<div class="number" id="path-count">2</div>' in page.text
    # A public cache needs no netrc.
    assert 'id="netrc"' not in page.text

    by_name = web_farm.get(f"/caches/{name}", "", params={"q": "hello"})
    assert _hash(hello) in by_name.text and _hash(busybox) not in by_name.text
    by_hash = web_farm.get(f"/caches/{name}", "", params={"q": _hash(busybox)[:7]})
    assert _hash(busybox) in by_hash.text and _hash(hello) not in by_hash.text
    nothing = web_farm.get(f"/caches/{name}", "", params={"q": "no-such-thing"})
    assert 'id="no-paths"' in nothing.text

    path = web_farm.get(f"/caches/{name}/paths/{_hash(hello)}", "")
    assert path.status_code == 200
    references = re.search(r'<ul id="references">(.*?)</ul>', path.text, re.S)
    assert references is not None
    assert f'href="/caches/{name}/paths/{_hash(busybox)}"' in references.group(1)
    signatures = re.search(r'<ul id="signatures">(.*?)</ul>', path.text, re.S)
    assert signatures is not None
    assert public_key.split(":")[0] + ":" in signatures.group(1)
    narinfo = web_farm.get(f"/cache/{name}/{_hash(hello)}.narinfo", "").text
    nar_size = re.search(r"NarSize: (\d+)", narinfo)
    assert nar_size is not None and f"({nar_size.group(1)} bytes)" in path.text
    # busybox's page names hello among its referrers.
    dep = web_farm.get(f"/caches/{name}/paths/{_hash(busybox)}", "")
    referrers = re.search(r'<ul id="referrers">(.*?)</ul>', dep.text, re.S)
    assert referrers is not None and _hash(hello) in referrers.group(1)

    missing = web_farm.get(f"/caches/{name}/paths/{'0' * 32}", "")
    assert missing.status_code == 404 and "<html" in missing.text


def test_a_private_cache_is_seen_only_by_who_may_pull_it(web_farm: RunningFarm,
                                                         visitor: Visitor) -> None:
    name, _ = web_farm.create_cache(private=True)
    anonymous_list = web_farm.get("/caches", "")
    assert f"/caches/{name}" not in anonymous_list.text
    hidden = web_farm.get(f"/caches/{name}", "")
    absent = web_farm.get("/caches/no-such-cache-here", "")
    assert hidden.status_code == absent.status_code == 404
    # The same words as a cache that does not exist (names aside).
    assert hidden.text.replace(name, "X") == absent.text.replace("no-such-cache-here", "X")

    other = make_token(web_farm, "cache:some-other-cache:pull")
    visitor.sign_in(other)
    assert visitor.get(f"/caches/{name}").status_code == 404
    assert f"/caches/{name}" not in visitor.get("/caches").text

    allowed = Visitor(web_farm)
    try:
        allowed.sign_in(make_token(web_farm, f"cache:{name}:pull"))
        assert f'href="/caches/{name}"' in allowed.get("/caches").text
        page = allowed.get(f"/caches/{name}")
        assert page.status_code == 200
        assert 'id="netrc"' in page.text and "machine 127.0.0.1 password" in page.text
        # Reading is not administering: no GC forms.
        assert f'action="/caches/{name}/retention"' not in page.text
        refused = allowed.post(f"/caches/{name}/retention", {"retention_days": "3"},
                               form_on=f"/caches/{name}")
        assert refused.status_code == 403
    finally:
        allowed.close()


def test_retention_and_collection_forms_are_an_admins_with_csrf(web_farm: RunningFarm,
                                                                visitor: Visitor) -> None:
    name, _ = web_farm.create_cache()
    visitor.sign_in(web_farm.token)
    forged = visitor.http.post(f"/caches/{name}/retention",
                               data={"retention_days": "7", "csrf": "x" * 40})
    assert forged.status_code == 403 and "CSRF" in forged.text
    bad = visitor.post(f"/caches/{name}/retention", {"retention_days": "-1"},
                       form_on=f"/caches/{name}")
    assert bad.status_code == 400 and "retention must be" in bad.text
    saved = visitor.post(f"/caches/{name}/retention", {"retention_days": "7.5"},
                         form_on=f"/caches/{name}")
    assert saved.status_code == 303
    page = visitor.get(f"/caches/{name}")
    assert "older than <strong>7.5 days</strong>" in page.text
    assert "<td class=\"hide-narrow\">7.5 days</td>" in visitor.get("/caches").text
    cleared = visitor.post(f"/caches/{name}/retention", {"retention_days": ""},
                           form_on=f"/caches/{name}")
    assert cleared.status_code == 303
    assert "keeps every upload" in visitor.get(f"/caches/{name}").text

    report = visitor.post(f"/caches/{name}/gc", {"older_than_days": "30", "dry_run": "1"},
                          form_on=f"/caches/{name}")
    assert report.status_code == 200
    assert "(dry run)" in report.text and 'id="gc-report"' in report.text


def test_tokens_page_creates_shows_the_secret_once_and_revokes(web_farm: RunningFarm,
                                                               visitor: Visitor) -> None:
    anonymous = visitor.get("/tokens")
    assert anonymous.status_code == 401 and "/sign-in?next=" in anonymous.text
    submitter = Visitor(web_farm)
    try:
        submitter.sign_in(make_token(web_farm, "jobs:submit"))
        assert submitter.get("/tokens").status_code == 403
        assert 'href="/tokens"' not in submitter.get("/jobs").text
    finally:
        submitter.close()

    visitor.sign_in(web_farm.token)
    created = visitor.post("/tokens", {"name": "from-the-page", "scope": "jobs:submit",
                                       "more_scopes": "cache:web-b:pull"})
    assert created.status_code == 201, created.text
    assert created.headers["cache-control"] == "no-store"
    secret = re.search(r'<pre class="snippet" id="new-secret" tabindex="0">([^<]+)</pre>',
                       created.text)
    assert secret is not None
    whoami = web_farm.get("/api/v1/whoami", secret.group(1)).json()
    assert whoami == {"name": "from-the-page", "scopes": ["jobs:submit", "cache:web-b:pull"]}
    listing = visitor.get("/tokens")
    assert "from-the-page" in listing.text and secret.group(1) not in listing.text

    bad = visitor.post("/tokens", {"name": "x", "more_scopes": "root"}, form_on="/tokens")
    assert bad.status_code == 400 and "Unknown scope" in bad.text

    token_id = next(t["id"] for t in web_farm.get("/api/v1/tokens").json()
                    if t["name"] == "from-the-page")
    revoked = visitor.post(f"/tokens/{token_id}/revoke", {}, form_on="/tokens")
    assert revoked.status_code == 303
    assert web_farm.get("/api/v1/whoami", secret.group(1)).status_code == 401


def test_secrets_page_is_per_owner(web_farm: RunningFarm, visitor: Visitor) -> None:
    assert visitor.get("/secrets").status_code == 401
    visitor.sign_in(make_token(web_farm, "jobs:submit"))
    stored = visitor.post("/secrets", {"name": "deploy-netrc", "kind": "file",
                                       "value": "machine example.org password p\n",
                                       "path": "~/.netrc", "mode": "600"})
    assert stored.status_code == 201, stored.text
    assert "machine example.org" not in stored.text  # the value is never shown
    page = visitor.get("/secrets")
    assert "deploy-netrc" in page.text and "(600)" in page.text
    uuid = re.search(r"/secrets/([0-9a-f-]{36})/delete", page.text)
    assert uuid is not None

    stranger = Visitor(web_farm)
    try:
        stranger.sign_in(make_token(web_farm, "jobs:submit"))
        assert "deploy-netrc" not in stranger.get("/secrets").text
        assert stranger.post(f"/secrets/{uuid.group(1)}/delete", {},
                             form_on="/secrets").status_code == 404
    finally:
        stranger.close()
    bad_mode = visitor.post("/secrets", {"name": "other", "kind": "file", "value": "x",
                                         "path": "~/x", "mode": "9z"})
    assert bad_mode.status_code == 400 and "octal" in bad_mode.text
    deleted = visitor.post(f"/secrets/{uuid.group(1)}/delete", {}, form_on="/secrets")
    assert deleted.status_code == 303
    assert "deploy-netrc" not in visitor.get("/secrets").text


def test_runners_page_is_an_admins(web_farm: RunningFarm, visitor: Visitor) -> None:
    assert visitor.get("/runners").status_code == 401
    page = web_farm.get("/runners")  # the admin token as a bearer token
    assert page.status_code == 200
    row = re.search(r'<tr id="runner-\d+">(.*?)</tr>', page.text, re.S)
    assert row is not None
    assert "embedded" in row.group(1) and "bwrap" in row.group(1)
    assert "online" in row.group(1) and "/ 2</td>" in row.group(1)
    assert 'id="builders"' in page.text


def _badge_status(farm: RunningFarm, path: str) -> str:
    r = farm.get(path, "")
    assert r.status_code == 200 and r.headers["content-type"] == "image/svg+xml"
    found = re.search(r'aria-label="build: ([a-z]+)"', r.text)
    assert found is not None
    return found.group(1)


def test_badges_show_public_jobs_only(web_farm: RunningFarm) -> None:
    token = make_token(web_farm, "jobs:submit")
    public = submit(web_farm, token, "true", visibility="public",
                    tags=["badge-repo", "badge-ok.yml"])
    private = submit(web_farm, token, "false", visibility="private",
                     tags=["badge-repo", "badge-secret.yml"])
    wait_job(web_farm, public["id"], {"success"}, WEB_WAIT)
    wait_job(web_farm, private["id"], {"failed"}, WEB_WAIT)
    assert _badge_status(web_farm, "/badges/tag/badge-ok.yml.svg") == "success"
    assert _badge_status(web_farm, "/badges/name/badge-repo/badge-ok.yml.svg") == "success"
    # The private job's failure shows nowhere: neither its own tag nor the shared one.
    assert _badge_status(web_farm, "/badges/tag/badge-secret.yml.svg") == "unknown"
    assert _badge_status(web_farm, "/badges/tag/badge-repo.svg") == "success"
    assert _badge_status(web_farm, "/badges/name/badge-repo/badge-secret.yml.svg") == "unknown"

    first = web_farm.get("/badges/tag/badge-ok.yml.svg", "")
    assert first.headers["cache-control"] == "public, max-age=60"
    again = web_farm.get("/badges/tag/badge-ok.yml.svg", "",
                         headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert web_farm.get("/badges/name/.svg", "").status_code == 400


@pytest.mark.parametrize("path", ["/images"])
def test_registry_page_lists_built_images_with_layers(web_farm: RunningFarm, path: str
                                                      ) -> None:
    accept = "application/vnd.oci.image.manifest.v1+json"
    pulled = web_farm.get("/v2/shell/hello/manifests/latest", "", headers={"Accept": accept},
                          timeout=600)
    assert pulled.status_code == 200, pulled.text
    manifest: dict[str, Any] = pulled.json()
    page = web_farm.get(path, "")
    key = re.search(r'href="/images/([0-9a-f]{64})">shell/hello:latest</a>', page.text)
    assert key is not None, page.text
    image = web_farm.get(f"/images/{key.group(1)}", "")
    assert image.status_code == 200
    assert (f"podman pull --tls-verify=false 127.0.0.1:{web_farm.port}/shell/hello:latest"
            in image.text)
    assert pulled.headers["docker-content-digest"] in image.text
    layers = re.findall(r"<tr><td>\d+</td><td><code class=\"wrap\">(sha256:[0-9a-f]+)</code>",
                        image.text)
    assert layers == [layer["digest"] for layer in manifest["layers"]]
    assert 'id="build-log"' in image.text
    assert web_farm.get(f"/images/{'0' * 64}", "").status_code == 404
