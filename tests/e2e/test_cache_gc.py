"""Cache garbage collection on a running farm with nginx in front: `nixfarm cache gc`
removes old paths nothing newer needs, nginx stops answering them at once, and a
fresh store still substitutes every kept closure with stock Nix."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.fixtures.farm import RunningFarm, free_port
from tests.fixtures.nixenv import Nix


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    """A farm on SQLite (backdated with sqlite3 below), nginx in front by default."""
    running = RunningFarm(tmp_path_factory.mktemp("gc") / "data", free_port())
    running.start()
    yield running
    running.stop()


def _age_everything(farm: RunningFarm, days: int) -> None:
    """Make every path and NAR file of the farm ``days`` old (the app's own format)."""
    old = (datetime.now(UTC) - timedelta(days=days)).strftime("%Y-%m-%d %H:%M:%S.%f")
    with sqlite3.connect(farm.data_dir / "nixfarm.db", timeout=30) as db:
        db.execute("UPDATE cache_paths SET created_at = ?", (old,))
        db.execute("UPDATE nars SET created_at = ?", (old,))
    db.close()


def _nar_url(narinfo: str) -> str:
    return next(line.split(": ", 1)[1] for line in narinfo.splitlines()
                if line.startswith("URL: "))


def test_gc_removes_old_paths_nginx_stops_serving_them_and_kept_closures_substitute(
        farm: RunningFarm, nix: Nix) -> None:
    assert (farm.data_dir / "edge" / "www").is_dir(), "this test wants nginx in front"
    name, key = farm.create_cache()
    hello, greet, motd = (nix.build(a) for a in ("hello", "greet", "motd"))
    farm.cli("push", "--cache", name, hello, greet)
    # Read twice: the second answer comes from nginx's published copy.
    published: dict[str, tuple[str, str]] = {}
    for out in (hello, greet):
        url = f"/cache/{name}/{Path(out).name[:32]}.narinfo"
        farm.get(url, token="")
        again = farm.get(url, token="")
        assert again.status_code == 200 and "etag" in again.headers
        nar = f"/cache/{name}/{_nar_url(again.text)}"
        farm.get(nar, token="")
        assert "etag" in farm.get(nar, token="").headers
        published[out] = (url, nar)

    _age_everything(farm, 60)
    # motd's closure shares busybox and libgreeting with greet: those are old now, but
    # motd is new and needs them.
    pushed = farm.cli("push", "--cache", name, motd)
    assert "6 to upload" in pushed.stderr

    dry = farm.cli("cache", "gc", name, "--older-than", "30d", "--dry-run")
    assert "dry run" in dry.stdout
    assert "paths removed:     2" in dry.stdout and "paths kept:        2" in dry.stdout
    assert farm.get(published[hello][0], token="").status_code == 200

    done = farm.cli("cache", "gc", name, "--older-than", "30d")
    assert "paths removed:     2" in done.stdout, done.stdout
    assert "NAR files removed: 2" in done.stdout
    for url, nar in published.values():
        assert farm.get(url, token="").status_code == 404
        assert farm.get(nar, token="").status_code == 404
    info = farm.get(f"/api/v1/caches/{name}").json()
    assert info["paths"] == len(nix.run("nix-store", "-qR", motd).stdout.split())

    store = nix.fresh_store()
    nix.substitute(store, motd, f"{farm.url}/cache/{name}", key)
    assert (store / motd.lstrip("/")).exists()
    missing = nix.substitute(nix.fresh_store("hello"), hello, f"{farm.url}/cache/{name}", key,
                             check=False)
    assert missing.returncode != 0


def test_gc_usage_errors_and_permissions(farm: RunningFarm) -> None:
    name, _ = farm.create_cache()
    bad = farm.cli("cache", "gc", name, "--older-than", "30x", check=False)
    assert bad.returncode == 2 and "unknown unit 'x'" in bad.stderr
    ambiguous = farm.cli("cache", "gc", name, "--older-than", "1m", check=False)
    assert ambiguous.returncode == 2 and "write 1min for minutes" in ambiguous.stderr
    assert farm.cli("cache", "gc", name, "--older-than", "2w", "--dry-run").returncode == 0
    unknown = farm.cli("cache", "gc", "no-such-cache", "--older-than", "1h", check=False)
    assert unknown.returncode == 2 and "no-such-cache" in unknown.stderr

    url = f"/api/v1/caches/{name}/gc"
    refused = farm.request("POST", url, json={"older_than_days": -1})
    assert refused.status_code == 400
    assert refused.json()["error"]["field"] == "older_than_days"
    assert farm.request("POST", url, json={"dry_run": True}).json()["error"]["field"] \
        == "older_than_days"
    assert farm.request("POST", url, token="", json={"older_than_days": 1}).status_code == 401
    pusher = farm.request("POST", "/api/v1/tokens",
                          json={"name": "pusher", "scopes": [f"cache:{name}:push"]})
    assert pusher.status_code == 201, pusher.text
    forbidden = farm.request("POST", url, token=pusher.json()["secret"],
                             json={"older_than_days": 1})
    assert forbidden.status_code == 403
    ok = farm.request("POST", url, json={"older_than_days": 0.5, "dry_run": True})
    assert ok.status_code == 200 and ok.json()["paths_removed"] == 0
