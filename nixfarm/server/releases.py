"""Release builds: ``nixfarm release`` (docs/builders.md, "Release builds").

``POST /api/v1/releases`` (jobs:submit) fetches the revision on the server (``git
fetch`` from any URL the server reaches, a local path included) into a bare
repository of its own, ``<data dir>/releases/<key>/repo.git``, where ``<key>`` is 32
random bytes; resolves the revision to its commit; and queues an ordinary job:

    image: nix
    packages: [coreutils]
    sources:
      - src::<public URL>/releases/<key>/repo.git#<commit>
    cache: <cache>
    tasks:
      - release: |
          cd src
          nix-build <file> [-A <attr>]

The builder that takes it (any runner matching it: the pools' builders, created for
it) clones the revision from the farm over git's "dumb" HTTP protocol
(``GET /releases/<key>/repo.git/...``: static files, the key is the capability), so
it needs no credential and no access to the repository's own host; its ``cache
push`` step pushes every ``result*`` output's closure and build logs, signed by the
server with the cache's key.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
from pathlib import Path

from fastapi import APIRouter, Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

from nixfarm.errors import InvalidInput, NotFound
from nixfarm.scopes import JOBS_SUBMIT
from nixfarm.server.api.jobs import builds
from nixfarm.server.auth import require
from nixfarm.wire.jobs import JobOut, JobSubmit
from nixfarm.wire.releases import ReleaseRequest

router = APIRouter(prefix="/v1", tags=["jobs"])
_KEY = re.compile(r"^[A-Za-z0-9_-]{43}$")
_FETCH_SECONDS = 600


async def _git(*args: str, cwd: Path | None = None) -> str:
    process = await asyncio.create_subprocess_exec(
        "git", *args, cwd=cwd, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_TERMINAL_PROMPT": "0",
             "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(cwd or "/nonexistent"), "LC_ALL": "C"})
    try:
        out, err = await asyncio.wait_for(process.communicate(), _FETCH_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise InvalidInput(f"git {args[0]} took more than {_FETCH_SECONDS} s",
                           field="repo") from None
    if process.returncode != 0:
        last = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise InvalidInput(f"git {args[0]} failed: {last[0]}", field="repo")
    return out.decode().strip()


async def fetch_revision(repo: str, rev: str, where: Path) -> str:
    """Fetch ``repo``'s branches and tags into a new bare repository ``where`` and
    point its ``release`` branch (and HEAD) at ``rev``'s commit, which is returned."""
    if repo.startswith("-"):
        raise InvalidInput("the repository must not start with '-'", field="repo")
    if "://" not in repo and not repo.startswith("/") and ":" not in repo:
        raise InvalidInput(f"{repo!r}: give a URL or an absolute path", field="repo")
    await asyncio.to_thread(where.mkdir, parents=True)
    await _git("init", "-q", "--bare", str(where))
    await _git("fetch", "-q", "--no-tags", "--", repo, "+refs/heads/*:refs/heads/*",
               "+refs/tags/*:refs/tags/*", cwd=where)
    try:
        commit = await _git("rev-parse", "--verify", "-q", f"{rev}^{{commit}}", cwd=where)
    except InvalidInput:
        raise InvalidInput(f"{repo} has no revision {rev!r}", field="rev") from None
    await _git("update-ref", "refs/heads/release", commit, cwd=where)
    await _git("symbolic-ref", "HEAD", "refs/heads/release", cwd=where)
    await _git("update-server-info", cwd=where)
    return commit


def release_manifest(source: str, commit: str, body: ReleaseRequest) -> str:
    build = f"nix-build {body.file}" + (f" -A {body.attr}" if body.attr else "")
    packages = f"packages: [{', '.join(body.packages)}]\n" if body.packages else ""
    return (f"image: nix\n{packages}"
            f"sources:\n  - src::{source}#{commit}\n"
            f"cache: {body.cache}\n"
            f"tasks:\n  - release: |\n      cd src\n      {build}\n")


@router.post("/releases", status_code=201)
async def release(request: Request, body: ReleaseRequest) -> JobOut:
    """Queue a release build of ``repo`` at ``rev`` (see the module docstring): the job."""
    who = await require(request, JOBS_SUBMIT)
    settings = request.app.state.settings
    key = secrets.token_urlsafe(32)
    where = settings.data_dir / "releases" / key / "repo.git"
    commit = await fetch_revision(body.repo, body.rev, where)
    source = f"{settings.base_url}/releases/{key}/repo.git"
    submit = JobSubmit(manifest=release_manifest(source, commit, body),
                       tags=["release", *body.tags],
                       note=f"release of {body.repo} at {commit} ({body.file}"
                            + (f" -A {body.attr})" if body.attr else ")"))
    return await builds(request).jobs.submit(who, submit, release=True, pool=body.pool)


async def repository_file(request: Request) -> Response:
    """A file of a release's bare repository, for git's dumb HTTP protocol."""
    key, path = str(request.path_params["key"]), str(request.path_params["path"])
    root: Path = request.app.state.settings.data_dir / "releases"
    if not _KEY.match(key) or ".." in path.split("/") or path.startswith("/"):
        raise NotFound("There is no such release file.", kind="file", name=path)
    target = root / key / "repo.git" / path

    def regular() -> bool:
        resolved = target.resolve()
        return resolved.is_file() and resolved.is_relative_to((root / key).resolve())

    if not await asyncio.to_thread(regular):
        raise NotFound("There is no such release file.", kind="file", name=path)
    return FileResponse(target, media_type="application/octet-stream")


routes: list[BaseRoute] = [
    Route("/{key}/repo.git/{path:path}", repository_file, methods=["GET", "HEAD"]),
]
