"""Jobs without network substitute from the farm's own caches, through the runner
(issue 12): the runner's nix-daemon for them has no network, so the runner relays
the farm's caches named in its substituters into the daemon's namespace
(``runner.cacherelay``), and nothing else."""

from __future__ import annotations

import hashlib
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.farm import RunningFarm
from tests.security.conftest import make_farm, start_runner, stop_runner, tenant
from tests.security.test_store import BUSYBOX, host_valid

#: A derivation each tenant's job writes alike: the same output path every time.
BUILD_NIX = """\
{ bb, marker }:
derivation {
  name = "sub-${marker}"; system = builtins.currentSystem;
  builder = "${builtins.storePath bb}/bin/sh";
  args = [ "-c" "echo built-${marker} > $out" ];
}
"""

#: A fixed-output build that tries the relay for something else than a cache.
PROBE_NIX = """\
{ bb, marker }:
let b = builtins.storePath bb; in
derivation {
  name = "probe-${marker}"; system = builtins.currentSystem; builder = "${b}/bin/sh";
  args = [ "-c" ''
    printf 'POST /api/v1/caches HTTP/1.0\\r\\n\\r\\n' | ${b}/bin/nc -w 5 127.0.0.1 5380 \\
      | ${b}/bin/head -1 | ${b}/bin/sed 's/^/relay-said: /'
    echo x > $out
  '' ];
  outputHashMode = "flat"; outputHashAlgo = "sha256";
  outputHash = "@HASH@";
}
"""


@pytest.fixture(scope="module")
def cached_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningFarm, str]]:
    """A farm whose jobs have no network, a public cache, and a runner whose
    substituters name that cache."""
    where = tmp_path_factory.mktemp("sec-subst")
    farm = make_farm(where, network=False)
    cache, key = farm.create_cache()
    runner = start_runner(farm, where, "--nix-option",
                          f"substituters={farm.url}/cache/{cache}", "--nix-option",
                          f"trusted-public-keys={key}")
    yield farm, cache
    stop_runner(runner)
    farm.stop()


def test_a_job_without_network_substitutes_from_the_farms_cache(
        cached_farm: tuple[RunningFarm, str], tmp_path: Path) -> None:
    where = tmp_path
    farm, cache = cached_farm
    marker = uuid.uuid4().hex[:12]
    job, log = tenant(farm, "alice").run({"busybox": f"{BUSYBOX}\necho BB=$bb\n"})
    assert job["status"] == "success", log
    (bb,) = set(re.findall(r"^BB=(/nix/store/\S+)$", log, re.M))
    # Built outside any job (a job's build would ask the cache first, and its daemon
    # would remember the miss): the cache gets it, the runner's store forgets it.
    (where / "d.nix").write_text(BUILD_NIX)
    out = subprocess.run(
        ["nix-build", str(where / "d.nix"), "--no-out-link", "--option", "substituters", "",
         "--argstr", "bb", bb, "--argstr", "marker", marker],
        check=True, capture_output=True, text=True).stdout.strip()
    farm.cli("push", "--cache", cache, "--compression", "xz", out)
    subprocess.run(["nix-store", "--delete", out], check=True, capture_output=True)
    assert not host_valid(out)

    build = (f"{BUSYBOX}\ncat > d.nix <<'EOF'\n{BUILD_NIX}EOF\n"
             f'echo OUT=$(nix-build d.nix --argstr bb "$bb" --argstr marker {marker})\n')
    nix = PROBE_NIX.replace("@HASH@", hashlib.sha256(b"x\n").hexdigest())
    probe = (f"cat > p.nix <<'EOF'\n{nix}EOF\n"
             f'nix-build p.nix --argstr bb "$bb" --argstr marker {marker}\n')
    job, log = tenant(farm, "bob").run({"build": build + probe})
    assert job["status"] == "success", log
    assert f"copying path '{out}' from 'http://127.0.0.1:5380/cache/{cache}'" in log, log
    assert not re.search(rf"building '/nix/store/\S+-sub-{marker}\.drv'", log), log
    assert f"OUT={out}" in log and host_valid(out)
    # What a build in that namespace reaches through the relay: only the caches.
    assert "relay-said: HTTP/1.1 403 Forbidden" in log, log
