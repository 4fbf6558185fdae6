"""`nixfarm release` with the farm's embedded runner (no VM: fast): the server fetches
a revision of a local repository, the job clones it from the farm over git's dumb HTTP
protocol, builds release.nix and pushes the outputs, signed, to the cache. The same on
a netbooted builder: test_local_release.py."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.builders.releaserepo import release_repository
from tests.fixtures.farm import RunningFarm, running_farm
from tests.fixtures.nixenv import Nix


@pytest.fixture
def farm(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningFarm]:
    data = tmp_path / "data"
    data.mkdir()
    (data / "nixfarm.toml").write_text('nix_options = { substituters = "" }\n'
                                       '[registry.source]\nkind = "path"\n'
                                       f'location = "{__import__("nixfarm.demo").demo.path()}"\n')
    with running_farm("sqlite", request, data) as f:
        yield f


def test_release_builds_the_revision_and_pushes_it_signed(
        farm: RunningFarm, tmp_path: Path, nix: Nix) -> None:
    marker = f"m{uuid.uuid4().hex[:12]}"
    repo, commit = release_repository(tmp_path, marker, nix.build("busybox"))
    cache, public_key = farm.create_cache()

    done = farm.cli("release", "--repo", str(repo), "--rev", commit, "--cache", cache,
                    "--package", "coreutils", "--follow", check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"building {marker} for a release" in done.stdout
    (output,) = set(re.findall(
        rf"/nix/store/[a-z0-9]{{32}}-release-{marker}-1\.0(?!\.drv)", done.stdout))
    assert f"Pushed {output}" in done.stdout
    store = nix.fresh_store()
    nix.substitute(store, output, f"{farm.url}/cache/{cache}", public_key)
    assert marker in (store / output.lstrip("/") / "bin/released").read_text()
    drv = re.findall(rf"/nix/store/([a-z0-9]{{32}}-release-{marker}-1\.0\.drv)",
                     done.stdout)[0]
    log = farm.get(f"/cache/{cache}/log/{drv}", token="")
    assert log.status_code == 200 and f"building {marker} for a release" in log.text
    # The job says what it built.
    job = farm.get("/api/v1/jobs?tag=release").json()["jobs"][0]
    assert commit in job["note"] and "release" in job["tags"]


def test_bad_release_requests_are_refused_with_the_reason(
        farm: RunningFarm, tmp_path: Path) -> None:
    repo, _ = release_repository(tmp_path, "x", "/nix/store/unused")
    cache, _ = farm.create_cache()
    unknown = farm.request("POST", "/api/v1/releases", json={
        "repo": str(repo), "rev": "no-such-branch", "cache": cache})
    assert unknown.status_code == 400 and "no revision 'no-such-branch'" in unknown.text
    missing = farm.request("POST", "/api/v1/releases", json={
        "repo": str(tmp_path / "nothing"), "rev": "main", "cache": cache})
    assert missing.status_code == 400 and "git fetch failed" in missing.text
    option = farm.request("POST", "/api/v1/releases", json={
        "repo": str(repo), "rev": "--upload-pack=x", "cache": cache})
    assert option.status_code == 400
    # Nothing reaches the manifest but plain words.
    for field, value in (("cache", "c\ntasks: []"), ("packages", ["a]\nx: [b"]),
                         ("file", "-A x"), ("attr", "a; rm -rf ~")):
        r = farm.request("POST", "/api/v1/releases", json={
            "repo": str(repo), "rev": "main", "cache": cache, field: value})
        assert r.status_code == 400, (field, r.text)
    relative = farm.request("POST", "/api/v1/releases", json={
        "repo": "project", "rev": "main", "cache": cache})
    assert relative.status_code == 400 and "absolute path" in relative.text
    # Nothing leaks out of a release's repository over HTTP.
    assert farm.get("/releases/" + "a" * 43 + "/repo.git/HEAD", token="").status_code == 404
    assert farm.get("/releases/x/repo.git/../../admin.token", token="").status_code == 404
