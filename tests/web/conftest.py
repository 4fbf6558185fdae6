"""The web UI against a real farm: plain HTTP (httpx) and a real browser (Playwright
driving Debian's Chromium, ``/usr/bin/chromium``, which ``scripts/setup`` installs).

``web_farm`` is a demo farm (``nixfarm up --demo``) whose embedded runner runs jobs in
bubblewrap; ``browser`` is one headless Chromium per test session; ``Visitor`` is a
person with a browser cookie jar (httpx) who reads pages and sends their forms.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.farm import RunningFarm, free_port

CHROMIUM = "/usr/bin/chromium"
#: Chromium as root in a container: no setuid sandbox, no /dev/shm to speak of.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]


@pytest.fixture(scope="module")
def web_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    running = RunningFarm(tmp_path_factory.mktemp("web") / "data", free_port(),
                          extra_env={"NIXFARM_JOBS__SHUTDOWN_GRACE_SECONDS": "0"})
    running.start("--demo")
    yield running
    running.stop()


def make_token(farm: RunningFarm, *scopes: str, name: str | None = None) -> str:
    r = farm.request("POST", "/api/v1/tokens", json={
        "name": name or f"t-{uuid.uuid4().hex[:8]}", "scopes": list(scopes)})
    assert r.status_code == 201, r.text
    secret: str = r.json()["secret"]
    return secret


def submit(farm: RunningFarm, token: str, script: str, *, visibility: str = "public",
           tags: list[str] | None = None, note: str | None = None,
           tasks: dict[str, str] | None = None, execute: bool = True) -> dict[str, Any]:
    """Submit an ``image: nix`` job whose one task (``work``) runs ``script``."""
    tasks = tasks or {"work": script}
    manifest = "image: nix\npackages: [busybox]\ntasks:\n" + "".join(
        f"  - {name}: |\n" + "".join(f"      {line}\n" for line in body.splitlines())
        for name, body in tasks.items())
    r = farm.request("POST", "/api/v1/jobs", token, json={
        "manifest": manifest, "visibility": visibility, "tags": tags or [], "note": note,
        "execute": execute})
    assert r.status_code == 201, r.text
    job: dict[str, Any] = r.json()
    return job


#: How long the web tests wait for a job (``wait_job``): a browser is running too.
WEB_WAIT = 240


_CSRF = re.compile(r'name="csrf" value="([^"]*)"')


class Visitor:
    """A person with a browser's cookie jar, reading pages and sending their forms."""

    def __init__(self, farm: RunningFarm) -> None:
        self.farm = farm
        self.http = httpx.Client(base_url=farm.url, timeout=60, follow_redirects=False)

    def close(self) -> None:
        self.http.close()

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(path, **kwargs)

    def csrf(self, path: str = "/sign-in") -> str:
        """The CSRF token of the forms on ``path``."""
        page = self.get(path)
        found = _CSRF.search(page.text)
        assert found, f"no form with a CSRF token on {path}: {page.text[:500]}"
        return found.group(1)

    def post(self, path: str, data: dict[str, str], form_on: str | None = None
             ) -> httpx.Response:
        """POST ``data`` with the CSRF token of the page ``form_on`` (default: ``path``)."""
        return self.http.post(path, data={"csrf": self.csrf(form_on or path), **data})

    def sign_in(self, token: str) -> httpx.Response:
        r = self.post("/sign-in", {"token": token, "next": "/"})
        assert r.status_code == 303, r.text
        return r


@pytest.fixture
def visitor(web_farm: RunningFarm) -> Iterator[Visitor]:
    person = Visitor(web_farm)
    yield person
    person.close()


# --- the browser -------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium for the module's tests. Per module, not per session: the sync
    API keeps an event loop running in this thread while it is open, and the anyio tests
    of other modules need that thread's loop for themselves."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    context.set_default_timeout(30_000)
    yield context.new_page()
    context.close()


def browser_sign_in(page: Any, farm: RunningFarm, token: str, next_path: str = "/") -> None:
    """Sign in through the sign-in page, as a person does."""
    page.goto(f"{farm.url}/sign-in?next={next_path}")
    page.fill("#token", token)
    page.click("button[type=submit]:has-text('Sign in with a token')")
    page.wait_for_selector("#signed-in-as")
