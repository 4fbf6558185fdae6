"""`nixfarm release` with the farm's embedded runner (no VM: fast): the server fetches
a revision of a local repository, the job clones it from the farm over git's dumb HTTP
protocol, builds release.nix and pushes the outputs, signed, to the cache. The same on
a netbooted builder: test_local_release.py."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
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
                                       f'location = "{__import__("nixfarm.demo").demo.path()}"\n'
                                       f'[builders]\nrelease_paths = ["{tmp_path}/allowed"]\n')
    with running_farm("sqlite", request, data) as f:
        yield f


def test_release_builds_the_revision_and_pushes_it_signed(
        farm: RunningFarm, tmp_path: Path, nix: Nix) -> None:
    marker = f"m{uuid.uuid4().hex[:12]}"
    repo, commit = release_repository(tmp_path, marker, nix.build("busybox"))
    cache, public_key = farm.create_cache()

    # An argument reaches the expression as it was given: the job's shell does not
    # expand it (it would say /home/build), the build's own shell does.
    done = farm.cli("release", "--repo", str(repo), "--rev", commit, "--cache", cache,
                    "--package", "coreutils", "--argstr", "greeting=: it's; $HOME",
                    "--follow", check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"building {marker} for a release: it's; /homeless-shelter" in done.stdout
    (output,) = set(re.findall(
        rf"/nix/store/[a-z0-9]{{32}}-release-{marker}-1\.0(?!\.drv)", done.stdout))
    assert f"Pushed {output}" in done.stdout
    store = nix.fresh_store()
    nix.substitute(store, output, f"{farm.url}/cache/{cache}", public_key)
    assert marker in (store / output.lstrip("/") / "bin/released").read_text()
    drv = re.findall(rf"/nix/store/([a-z0-9]{{32}}-release-{marker}-1\.0\.drv)",
                     done.stdout)[0]
    log = farm.get(f"/cache/{cache}/log/{drv}", token="")
    assert log.status_code == 200 and f"building {marker} for a release:" in log.text
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
                         ("file", "-A x"), ("attr", "a; rm -rf ~"),
                         ("args", {"x; rm -rf ~": "1"}), ("args", {"x": "1\ntasks: []"})):
        r = farm.request("POST", "/api/v1/releases", json={
            "repo": str(repo), "rev": "main", "cache": cache, field: value})
        assert r.status_code == 400, (field, r.text)
    relative = farm.request("POST", "/api/v1/releases", json={
        "repo": "project", "rev": "main", "cache": cache})
    assert relative.status_code == 400 and "absolute path" in relative.text
    # Nothing leaks out of a release's repository over HTTP.
    assert farm.get("/releases/" + "a" * 43 + "/repo.git/HEAD", token="").status_code == 404
    assert farm.get("/releases/x/repo.git/../../admin.token", token="").status_code == 404


def test_only_admins_release_from_the_servers_own_files(
        farm: RunningFarm, tmp_path: Path) -> None:
    repo, _ = release_repository(tmp_path, "x", "/nix/store/unused")
    (tmp_path / "allowed").mkdir()
    allowed, _ = release_repository(tmp_path / "allowed", "x", "/nix/store/unused")
    (tmp_path / "allowed" / "link").symlink_to(repo)  # a way out, symbolic
    cache, _ = farm.create_cache()
    r = farm.request("POST", "/api/v1/tokens", json={
        "name": f"s-{uuid.uuid4().hex[:8]}", "scopes": ["jobs:submit", f"cache:{cache}:push"]})
    assert r.status_code == 201, r.text
    submitter = r.json()["secret"]

    def release(repo_: str, token: str) -> httpx.Response:
        return farm.request("POST", "/api/v1/releases", token=token, json={
            "repo": repo_, "rev": "main", "cache": cache, "pool": None})

    # Any repository path the server can read, by path or file:// URL: not for a submitter.
    for outside in (str(repo), f"file://{repo}", str(tmp_path / "allowed" / "link"),
                    f"{tmp_path}/allowed/../project", str(farm.data_dir)):
        r = release(outside, submitter)
        assert r.status_code == 403, (outside, r.text)
        assert "reads the server's own files: that needs an admin token, or a directory " \
               f"under builders.release_paths ({tmp_path}/allowed)" in r.text, r.text
    # A path under the configured directory is, and an admin's path anywhere.
    mine = release(str(allowed), submitter)
    assert mine.status_code == 201, mine.text
    admins = release(f"file://{repo}", farm.token)
    assert admins.status_code == 201, admins.text
    for job in (mine.json(), admins.json()):
        farm.request("POST", f"/api/v1/jobs/{job['id']}/cancel")
    # Remote URLs stay open to submitters (this one answers nothing: git says so), and
    # nothing else reaches git: transport helpers, other schemes, relative paths.
    r = release("http://127.0.0.1:1/project.git", submitter)
    assert r.status_code == 400 and "git fetch failed" in r.text, r.text
    for bad in ("ext::sh -c touch% /tmp/x", "fd::3", "project/x:y", "ftp://h/x.git"):
        r = release(bad, submitter)
        assert r.status_code == 400 and "give a git URL" in r.text, (bad, r.text)
