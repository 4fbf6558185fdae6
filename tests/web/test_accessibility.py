"""Every page passes axe-core (vendored from the npm registry in tests/web/vendor) in a
real browser with no serious or critical violation, at desktop and phone widths."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.farm import RunningFarm
from tests.web.conftest import browser_sign_in
from tests.web.demo import ANONYMOUS_PAGES, Demo, pages, populate

AXE = Path(__file__).with_name("vendor") / "axe.min.js"
WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}


@pytest.fixture(scope="module")
def demo(web_farm: RunningFarm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    yield populate(web_farm.url, web_farm.token, tmp_path_factory.mktemp("demo-nix"))


def serious_violations(page: Any) -> list[str]:
    """axe-core's serious and critical violations on the page, one line each."""
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("async () => await axe.run(document, "
                           "{resultTypes: ['violations']})")
    return [f"{v['impact']}: {v['id']} ({v['help']}) at "
            + json.dumps([n["target"] for n in v["nodes"]][:5])
            for v in result["violations"] if v["impact"] in ("serious", "critical")]


@pytest.mark.parametrize("width", list(WIDTHS))
def test_every_page_has_no_serious_accessibility_violation(
        web_farm: RunningFarm, demo: Demo, page: Any, width: str) -> None:
    page.set_viewport_size(dict(zip(("width", "height"), WIDTHS[width], strict=True)))
    found: dict[str, list[str]] = {}
    for name, path in ANONYMOUS_PAGES.items():
        page.goto(web_farm.url + path)
        found[name] = serious_violations(page)
    browser_sign_in(page, web_farm, web_farm.token)
    for name, path in pages(demo).items():
        response = page.goto(web_farm.url + path)
        assert response is not None and response.status == 200, (name, path)
        found[name] = serious_violations(page)
    assert {name: v for name, v in found.items() if v} == {}
    # axe really ran on every page: the count is of pages, not of a no-op.
    assert len(found) == len(ANONYMOUS_PAGES) + len(pages(demo))
