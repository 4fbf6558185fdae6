"""``nixfarm use CACHE``: after it, stock Nix substitutes from the cache with nothing else set."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx

from tests.fixtures.farm import NIXFARM, RunningFarm
from tests.fixtures.nixenv import Nix


def _use(farm: RunningFarm, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NIXFARM_URL": farm.url, "NIXFARM_TOKEN": farm.token,
           "XDG_CONFIG_HOME": str(config)}
    return subprocess.run([NIXFARM, "use", *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_use_a_private_cache_then_substitute_with_stock_nix(
        farm: RunningFarm, nix: Nix, tmp_path: Path) -> None:
    name, key = farm.create_cache(private=True)
    hello = nix.build("hello")
    farm.cli("push", "--cache", name, hello)
    config = tmp_path / "config"
    (config / "nix").mkdir(parents=True)
    # The user's own settings stay; no cache.nixos.org (unreachable here).
    (config / "nix/nix.conf").write_text("substituters =\nrequire-sigs = true\n")

    printed = _use(farm, config, name, "--print")
    assert printed.returncode == 0, printed.stderr
    assert f"extra-substituters = {farm.url}/cache/{name}" in printed.stdout
    assert f"extra-trusted-public-keys = {key}" in printed.stdout
    assert (config / "nix/nix.conf").read_text() == "substituters =\nrequire-sigs = true\n"

    for _ in range(2):  # a second run replaces its lines instead of adding more
        done = _use(farm, config, name)
        assert done.returncode == 0, done.stderr
    conf = (config / "nix/nix.conf").read_text()
    assert conf.startswith("substituters =\nrequire-sigs = true\n")
    assert conf.count("extra-substituters") == 1 and conf.count(key) == 1
    netrc = config / "nix/netrc"
    assert netrc.stat().st_mode & 0o777 == 0o600
    secret = netrc.read_text().split("password ")[1].split()[0]
    assert secret != farm.token  # a token of its own, which may pull and nothing else
    pull = httpx.get(f"{farm.url}/cache/{name}/nix-cache-info", auth=("nixfarm", secret))
    assert pull.status_code == 200
    push = httpx.put(f"{farm.url}/cache/{name}/nix-cache-info", auth=("nixfarm", secret),
                     content=b"StoreDir: /nix/store\n")
    assert push.status_code == 403

    store = nix.fresh_store()
    env = {**os.environ, "XDG_CONFIG_HOME": str(config), "XDG_CACHE_HOME": str(tmp_path / "c")}
    done = subprocess.run(["nix-store", "--store", str(store), "--realise", hello],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (store / hello.lstrip("/") / "bin/hello").exists()


def test_use_a_cache_that_does_not_exist(farm: RunningFarm, tmp_path: Path) -> None:
    done = _use(farm, tmp_path, "no-such-cache")
    assert done.returncode == 2
    assert "no-such-cache" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "nix").exists()
