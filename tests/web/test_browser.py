"""The web UI in a real browser (Chromium through Playwright) against a real farm."""

from __future__ import annotations

from typing import Any

from tests.fixtures.farm import RunningFarm
from tests.web.conftest import browser_sign_in, make_token


def test_sign_in_and_out_in_a_browser(web_farm: RunningFarm, page: Any) -> None:
    token = make_token(web_farm, "jobs:submit", name="dora")
    browser_sign_in(page, web_farm, token, "/jobs")
    assert page.url == f"{web_farm.url}/jobs"
    assert page.text_content("#signed-in-as") == "dora"
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["nixfarm_session"]["httpOnly"] is True
    assert cookies["nixfarm_session"]["sameSite"] == "Lax"
    assert page.evaluate("document.cookie").find("nixfarm_session") == -1  # HttpOnly
    page.click("text=Sign out")
    page.wait_for_selector("#sign-in")
    assert "nixfarm_session" not in {c["name"] for c in page.context.cookies()}
