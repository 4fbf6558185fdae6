"""The README, walked as a new user would, on a Debian 12 that has never seen nixfarm.

A root made with ``debootstrap --variant=minbase`` (see root.py) gets a copy of this
checkout; inside it the README's first command runs (``scripts/setup && .venv/bin/nixfarm
up --demo``), then its examples: build ``hello`` from the demo set, ``nixfarm push`` it,
``nix copy --to`` a path the cache lacks with a netrc token, substitute both into a fresh
store with signatures required, ``skopeo inspect`` an image built on demand, and
``nixfarm submit --follow`` an ``image: nix`` job, signs in on the web, and tries the
farm as a stranger with a ``jobs:submit`` token would. A failure names the README step and
shows the output that broke.

This is the check that a green CI run means a new machine works: it depends on nothing
installed on the CI machine by hand. It runs after the rest of the suite (``scripts/test``
passes ``--pristine``), and takes a few minutes: set SKIP_PRISTINE_STAGE=1 to skip it
while iterating locally.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.farm import free_port
from tests.pristine.root import PristineRoot, pristine_root

REPO = Path(__file__).resolve().parents[2]
CHECKOUT = "/root/nixfarm"
#: The tail of a failed step's output shown in the failure.
TAIL_LINES = 60

pytestmark = pytest.mark.timeout(2400)


class Readme:
    """Runs README steps in the root, each failure naming its step."""

    def __init__(self, root: PristineRoot, port: int) -> None:
        self.root = root
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {"NIXFARM_LISTEN": f"127.0.0.1:{port}",
                    "NIXFARM_DATA_DIR": f"{CHECKOUT}/data"}

    def step(self, name: str, script: str, timeout: float = 300) -> str:
        started = time.monotonic()
        done = self.root.run(f"cd {CHECKOUT}\n{script}", timeout, self.env)
        took = time.monotonic() - started
        print(f"README step {name!r}: exit {done.code} in {took:.0f} s")
        if done.code != 0:
            tail = "\n".join(done.output.splitlines()[-TAIL_LINES:])
            pytest.fail(f"README step {name!r} failed on a pristine Debian 12 (exit "
                        f"{done.code}):\n$ {script.strip()}\n{tail}", pytrace=False)
        return done.output


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PristineRoot]:
    if os.geteuid() != 0:
        pytest.fail("the pristine-machine stage needs root (debootstrap, namespaces)")
    base = Path(tmp_path_factory.mktemp("pristine"))
    log = base / "debootstrap.log"
    with pristine_root(base / "root", log) as made:
        made.copy_in(REPO, CHECKOUT)
        yield made
    subprocess.run(["rm", "-rf", "--one-file-system", str(base / "root")], check=False)


def test_the_readme_works_on_a_pristine_debian_12(root: PristineRoot, tmp_path: Path) -> None:
    readme = Readme(root, free_port())
    # "Start": the first command. setup in the foreground, then the farm in the background.
    readme.step("scripts/setup", "scripts/setup", timeout=1200)
    farm_log = tmp_path / "farm.log"
    farm = root.spawn(f"cd {CHECKOUT}\n.venv/bin/nixfarm up --demo", farm_log, readme.env)
    _wait_until_up(readme, farm, farm_log)

    # "Use the cache".
    hello = readme.step("build hello from the demo set",
                        "nix-build nixfarm/demo -A hello --no-out-link --option substituters ''"
                        ).strip().splitlines()[-1]
    assert hello.startswith("/nix/store/") and hello.endswith("-hello-2.12"), hello
    readme.step("nixfarm push", f".venv/bin/nixfarm push --cache demo {hello}")
    cowsay = readme.step("build cowsay", "nix-build nixfarm/demo -A cowsay --no-out-link "
                                         "--option substituters ''").strip().splitlines()[-1]
    readme.step("nix copy --to with a netrc token", f"""
        token=$(.venv/bin/nixfarm token create --scope cache:demo:push)
        printf 'machine 127.0.0.1\\nlogin nixfarm\\npassword %s\\n' "$token" > ~/.netrc-nixfarm
        nix copy --extra-experimental-features nix-command --option netrc-file ~/.netrc-nixfarm \\
          --to {readme.url}/cache/demo {cowsay}
    """)
    readme.step("substitute into a fresh store, signatures required", f"""
        nix-store --store /tmp/fresh-store --option sandbox true -r {hello} {cowsay} \\
          --option substituters {readme.url}/cache/demo --option require-sigs true \\
          --option trusted-public-keys "$(.venv/bin/nixfarm cache key demo)" \\
          --option narinfo-cache-positive-ttl 0
        test -x /tmp/fresh-store{hello}/bin/hello
        test -x /tmp/fresh-store{cowsay}/bin/cowsay
    """)

    # "Pull images built from Nix packages".
    inspected = readme.step(
        "skopeo inspect an image built on demand",
        f"skopeo inspect --tls-verify=false docker://127.0.0.1:{readme.port}/shell/cowsay:latest")
    assert '"Layers"' in inspected, inspected

    # "Run jobs".
    followed = readme.step("nixfarm submit --follow an image: nix job", """
        cat > hello.yml <<'YAML'
        image: nix
        packages: [hello, coreutils]
        environment:
          GREETING: hi
        tasks:
          - greet: |
              echo "$GREETING"
              hello
        YAML
        .venv/bin/nixfarm manifest check hello.yml
        .venv/bin/nixfarm submit hello.yml --follow
    """.replace("\n        ", "\n"), timeout=600)
    assert "Hello, world!" in followed, followed

    # "Look at it in a browser": sign in with a token (a session cookie, CSRF-checked
    # form), see the private job; Debian's Chromium (installed by setup) renders a page.
    web = readme.step("sign in on the web and read the job", f"""
        .venv/bin/python - <<'PY'
        import re, httpx
        url, token = "{readme.url}", open("data/admin.token").read().strip()
        with httpx.Client(base_url=url) as anyone:
            page = anyone.get("/jobs")
            assert "Hello" not in page.text
        with httpx.Client(base_url=url, follow_redirects=True) as browser:
            form = browser.get("/sign-in").text
            csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
            done = browser.post("/sign-in", data={{"token": token, "csrf": csrf, "next": "/jobs"}})
            assert done.status_code == 200 and "Sign out" in done.text, done.text[:500]
            job = re.search(r'href="/jobs/([0-9]+)"', done.text).group(1)
            page = browser.get(f"/jobs/{{job}}")
            assert page.status_code == 200 and "Hello, world!" in page.text, page.text[:500]
            print("signed in; job", job, "readable")
        PY
        chromium --headless --no-sandbox --disable-gpu --dump-dom {readme.url}/sign-in \
          2>/dev/null | grep -c 'name="token"'
    """.replace("\n        ", "\n"))
    assert "readable" in web and web.strip().splitlines()[-1] != "0", web
    job_id = web.split("signed in; job ", 1)[1].split()[0]

    # A stranger with only jobs:submit: cannot read the job above, cannot delete a
    # store path through the job's Nix, cannot read the host's files.
    attacked = readme.step("try it as an attacker with a jobs:submit token", f"""
        mallory=$(.venv/bin/nixfarm token create --name mallory --scope jobs:submit)
        .venv/bin/python - "$mallory" <<'PY'
        import sys, httpx
        r = httpx.get("{readme.url}/api/v1/jobs/{job_id}",
                      headers={{"Authorization": "Bearer " + sys.argv[1]}})
        assert r.status_code == 404, r.text
        print("private job: 404")
        PY
        cat > evil.yml <<'YAML'
        image: nix
        packages: [coreutils]
        tasks:
          - evil: |
              nix-store --delete {hello} && echo DELETED || echo refused
              cat /root/.bashrc /etc/shadow 2>/dev/null && echo HOSTFILES || echo no-host-files
        YAML
        .venv/bin/nixfarm submit --token "$mallory" evil.yml --follow || true
        nix-store --check-validity {hello} && echo still-valid
    """.replace("\n        ", "\n"), timeout=600)
    assert "private job: 404" in attacked and "still-valid" in attacked, attacked
    assert "DELETED" not in attacked and "HOSTFILES" not in attacked, attacked
    assert "refused" in attacked and "no-host-files" in attacked, attacked  # it ran


def _wait_until_up(readme: Readme, farm: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and farm.poll() is None:
        try:
            if httpx.get(f"{readme.url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    what = (f"exited with {farm.returncode}" if farm.poll() is not None
            else "did not answer in 120 s")
    pytest.fail(f"README step 'nixfarm up --demo' {what} on a pristine Debian 12:\n"
                f"{log.read_text()[-6000:]}", pytrace=False)
