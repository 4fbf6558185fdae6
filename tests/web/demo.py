"""Demo content for a farm: what the accessibility test and the screenshot script show.

One public cache with the demo ``hello`` closure, a private cache, a built image, jobs
that succeed, fail and run on (with tags, a group, ANSI colours in the log), a
secret, and a token besides the admin's: enough that every page has something on it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

import nixfarm.demo

NIXFARM = str(Path(sys.executable).with_name("nixfarm"))


@dataclass(frozen=True)
class Demo:
    """Where things are: the paths a page test or a screenshot visits."""

    cache: str
    private_cache: str
    path_hash: str
    image_key: str
    job_ids: dict[str, int]
    group_id: int
    submitter: str


def _nix_env(home: Path) -> dict[str, str]:
    return {**os.environ, "XDG_CACHE_HOME": str(home / "xdg"),
            "NIX_CONFIG": "substituters =\nsandbox = true\nsandbox-fallback = false"}


def _wait(client: httpx.Client, job_id: int, wanted: set[str], seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if client.get(f"/api/v1/jobs/{job_id}").json()["status"] in wanted:
            return
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not reach {wanted} in {seconds} s")


def _manifest(tasks: dict[str, str]) -> str:
    return "image: nix\npackages: [busybox]\ntasks:\n" + "".join(
        f"  - {name}: |\n" + "".join(f"      {line}\n" for line in body.splitlines())
        for name, body in tasks.items())


def populate(url: str, admin_token: str, work: Path) -> Demo:
    """Fill the farm at ``url`` (an empty ``nixfarm up --demo``) with demo content."""
    admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_token}"},
                         timeout=600)
    with admin:
        def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            r = admin.post(path, json=body)
            assert r.status_code == 201, r.text
            found: dict[str, Any] = r.json()
            return found

        post("/api/v1/caches", {"name": "nixpkgs-mirror"})
        post("/api/v1/caches", {"name": "team-private", "private": True})
        work.mkdir(parents=True, exist_ok=True)
        env = _nix_env(work)
        hello = subprocess.run(["nix-build", str(nixfarm.demo.path()), "--no-out-link",
                                "-A", "hello"], capture_output=True, text=True, env=env,
                               check=True, timeout=600).stdout.strip()
        subprocess.run([NIXFARM, "push", "--cache", "nixpkgs-mirror", hello], check=True,
                       capture_output=True, timeout=600,
                       env={**env, "NIXFARM_URL": url, "NIXFARM_TOKEN": admin_token})
        pulled = admin.get("/v2/shell/hello/manifests/latest")
        assert pulled.status_code == 200, pulled.text
        image_key = ""
        for line in admin.get("/images").text.splitlines():
            if ">shell/hello:latest<" in line:
                image_key = line.split('href="/images/', 1)[1].split('"', 1)[0]
        assert image_key, "the image was not listed"

        submitter = post("/api/v1/tokens", {"name": "alice", "scopes": [
            "jobs:submit", "cache:team-private:pull"]})["secret"]
        user = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {submitter}"},
                            timeout=60)
        with user:
            def submit(tasks: dict[str, str], tags: list[str], note: str,
                       execute: bool = True) -> int:
                r = user.post("/api/v1/jobs", json={
                    "manifest": _manifest(tasks), "tags": tags, "note": note,
                    "visibility": "public", "execute": execute})
                assert r.status_code == 201, r.text
                job_id: int = r.json()["id"]
                return job_id

            ok = submit({"build": "printf '\\033[32mbuilding\\033[0m hello\\n'\n"
                                  "for i in $(seq 1 40); do echo \"step $i\"; done",
                         "test": "echo '\\033[1mall tests passed\\033[0m'"},
                        ["hello", "build.yml"], "Build and test hello")
            failed = submit({"lint": "echo 'lint: 3 problems' >&2\nexit 1"},
                            ["hello", "lint.yml"], "Lint")
            running = submit({"soak": "while true; do echo tick; sleep 1; done"},
                             ["hello", "soak.yml"], "A soak test that runs on")
            grouped = [submit({"one": "echo one"}, ["matrix"], f"matrix {n}", execute=False)
                       for n in (1, 2)]
            group = user.post("/api/v1/job-groups", json={"job_ids": grouped,
                                                          "note": "A matrix"})
            assert group.status_code == 201, group.text
            secret = user.post("/api/v1/secrets", json={
                "name": "deploy-key", "kind": "ssh_key", "data": "c2VjcmV0"})
            assert secret.status_code == 201, secret.text
            _wait(admin, ok, {"success"})
            _wait(admin, failed, {"failed"})
            _wait(admin, running, {"running"})
        path_hash = hello.rsplit("/", 1)[-1][:32]
        return Demo("nixpkgs-mirror", "team-private", path_hash, image_key,
                    {"success": ok, "failed": failed, "running": running},
                    int(group.json()["id"]), submitter)


def pages(demo: Demo) -> dict[str, str]:
    """Every page of the site by a short name, as an admin sees it (anonymous visitors
    see the sign-in and error pages)."""
    return {
        "home": "/",
        "jobs": "/jobs",
        "job": f"/jobs/{demo.job_ids['success']}",
        "job-failed": f"/jobs/{demo.job_ids['failed']}",
        "job-running": f"/jobs/{demo.job_ids['running']}",
        "job-edit": f"/jobs/{demo.job_ids['success']}/edit",
        "job-group": f"/job-groups/{demo.group_id}",
        "caches": "/caches",
        "cache": f"/caches/{demo.cache}",
        "cache-private": f"/caches/{demo.private_cache}",
        "cache-path": f"/caches/{demo.cache}/paths/{demo.path_hash}",
        "registry": "/images",
        "image": f"/images/{demo.image_key}",
        "runners": "/runners",
        "tokens": "/tokens",
        "secrets": "/secrets",
    }


ANONYMOUS_PAGES = {"sign-in": "/sign-in", "not-found": "/jobs/999999",
                   "sign-in-needed": "/tokens"}
