"""In a real browser: open a cache from the list and copy its nix.conf lines."""

from __future__ import annotations

from typing import Any

from tests.fixtures.farm import RunningFarm
from tests.web.conftest import browser_sign_in, make_token


def test_open_a_cache_and_copy_its_nix_conf_lines(web_farm: RunningFarm, browser: Any
                                                  ) -> None:
    name, public_key = web_farm.create_cache(private=True)
    context = browser.new_context(permissions=["clipboard-read", "clipboard-write"])
    context.set_default_timeout(30_000)
    page = context.new_page()
    try:
        # Signed out, the private cache is not there.
        page.goto(f"{web_farm.url}/caches")
        assert page.locator(f"a[href='/caches/{name}']").count() == 0
        browser_sign_in(page, web_farm, make_token(web_farm, f"cache:{name}:pull"),
                        "/caches")
        page.click(f"a[href='/caches/{name}']")
        page.wait_for_selector("#nix-conf")
        assert page.text_content("#public-key") == public_key
        copy = page.locator("button.copy[data-copy='nix-conf']")
        assert copy.is_visible()  # shown by the script: the clipboard API is there
        copy.click()
        page.wait_for_function("document.querySelector(\"button.copy[data-copy='nix-conf']\")"
                               ".textContent === 'Copied'")
        copied = page.evaluate("navigator.clipboard.readText()")
        assert copied == (f"extra-substituters = {web_farm.url}/cache/{name}\n"
                          f"extra-trusted-public-keys = {public_key}")
        # A private cache also shows the netrc line, with its own Copy button.
        assert "password <a token with" in (page.text_content("#netrc") or "")
    finally:
        context.close()
