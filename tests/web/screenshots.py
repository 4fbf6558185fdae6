"""Screenshots of every page at desktop and phone widths, for docs/web.md and the README.

``scripts/screenshots [OUT_DIR]`` runs this: it starts a demo farm (``nixfarm up
--demo``) in a scratch directory, fills it with demo content (``tests/web/demo.py``),
and drives the same headless Chromium the tests use (Debian's, through Playwright) to
save ``<page>-desktop.png`` and ``<page>-phone.png`` (the first screenful, at a device
scale of 1, to keep the files small) under OUT_DIR (default ``docs/web``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from tests.fixtures.farm import RunningFarm, free_port
from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.web.demo import ANONYMOUS_PAGES, pages, populate

WIDTHS = {"desktop": (1280, 860), "phone": (390, 844)}
#: Pages shown to a visitor who has not signed in (the rest are an admin's view).
ANONYMOUS_SHOTS = {"sign-in": ANONYMOUS_PAGES["sign-in"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="docs/web", type=Path)
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="nixfarm-shots-", dir="/var/tmp") as scratch:
        farm = RunningFarm(Path(scratch) / "data", free_port(),
                           extra_env={"NIXFARM_JOBS__SHUTDOWN_GRACE_SECONDS": "0"})
        farm.start("--demo")
        try:
            demo = populate(farm.url, farm.token, Path(scratch) / "nix")
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                                     headless=True, args=CHROMIUM_ARGS)
                for width, (w, h) in WIDTHS.items():
                    context = browser.new_context(viewport={"width": w, "height": h},
                                                  device_scale_factor=1)
                    page = context.new_page()
                    for name, path in ANONYMOUS_SHOTS.items():
                        page.goto(farm.url + path)
                        page.screenshot(path=str(out / f"{name}-{width}.png"))
                    page.goto(f"{farm.url}/sign-in?next=/")
                    page.fill("#token", farm.token)
                    page.click("button[type=submit]:has-text('Sign in with a token')")
                    page.wait_for_selector("#signed-in-as")
                    for name, path in pages(demo).items():
                        page.goto(farm.url + path)
                        page.wait_for_load_state("networkidle") if "running" not in name \
                            else page.wait_for_timeout(1500)
                        page.screenshot(path=str(out / f"{name}-{width}.png"))
                    context.close()
                browser.close()
        finally:
            farm.stop()
    shots = sorted(out.glob("*.png"))
    print(f"{len(shots)} screenshots in {out}, {sum(s.stat().st_size for s in shots)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
