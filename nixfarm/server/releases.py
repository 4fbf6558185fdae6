"""Release builds: ``nixfarm release`` (docs/builders.md, "Release builds").

``POST /api/v1/releases`` (jobs:submit) fetches the revision on the server (``git
fetch`` from any http, https, git or ssh URL the server reaches; from its own files, a
local path or file:// URL, only for an admin or under ``builders.release_paths``:
otherwise any submitter could make the server read any repository it can) into a bare
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
import shlex
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from fastapi import APIRouter, Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

from nixfarm.errors import Forbidden, InvalidInput, NotFound
from nixfarm.scopes import ADMIN, JOBS_SUBMIT
from nixfarm.server.api.jobs import builds
from nixfarm.server.auth import require
from nixfarm.tokens import Principal
from nixfarm.wire.jobs import JobOut, JobSubmit
from nixfarm.wire.releases import ReleaseRequest

router = APIRouter(prefix="/v1", tags=["jobs"])
_KEY = re.compile(r"^[A-Za-z0-9_-]{43}$")
_FETCH_SECONDS = 600


#: Remote git URLs anyone who may submit jobs may release from (git's transports).
_REMOTE = re.compile(r"^(?:https?|git|ssh|git\+ssh|ssh\+git)://[^/]", re.IGNORECASE)
#: scp-like ``[user@]host:path`` (git reads it as ssh when no '/' precedes the ':').
_SCP = re.compile(r"^(?:[A-Za-z0-9._-]+@)?[A-Za-z0-9.-]+:(?!:|//)[^\n]*$")
#: The transports git may use for a fetch: remote ones, and ``file`` for local paths.
_PROTOCOLS = "http:https:git:ssh"


def local_path(repo: str) -> Path | None:
    """The server's own directory ``repo`` names (an absolute path or a file:// URL),
    None for a remote git URL; InvalidInput for anything else (a relative path, a
    transport helper such as ``ext::``, another scheme), naming what is accepted."""
    if repo.startswith("-"):
        raise InvalidInput("the repository must not start with '-'", field="repo")
    if repo.lower().startswith("file://"):
        path = urllib.parse.unquote(urllib.parse.urlsplit(repo).path)
        if path.startswith("/"):
            return Path(path)
    elif repo.startswith("/"):
        return Path(repo)
    elif _REMOTE.match(repo) or (_SCP.match(repo) and "/" not in repo.split(":", 1)[0]):
        return None
    raise InvalidInput(f"{repo!r}: give a git URL (http, https, git or ssh), "
                       "user@host:path, or an absolute path on the server", field="repo")


def may_read(who: Principal, path: Path, allowed: Sequence[Path]) -> None:
    """Forbidden unless ``who`` may make the server fetch from its own ``path``: an
    admin, or a path (symbolic links resolved) under one of ``allowed``."""
    if ADMIN in who.scopes:
        return
    real = path.resolve()
    if any(real.is_relative_to(a.resolve()) for a in allowed):
        return
    where = (f"under builders.release_paths ({', '.join(str(a) for a in allowed)})"
             if allowed else "in builders.release_paths (none is configured)")
    raise Forbidden(f"releasing from {path} reads the server's own files: that needs an "
                    f"admin token, or a directory {where}; a remote git URL (https, ssh) "
                    "needs neither", scope=ADMIN)


async def _git(*args: str, cwd: Path | None = None, protocols: str | None = None) -> str:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_TERMINAL_PROMPT": "0",
           "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(cwd or "/nonexistent"), "LC_ALL": "C"}
    if protocols is not None:
        env["GIT_ALLOW_PROTOCOL"] = protocols  # nothing else, whatever a URL leads to
    process = await asyncio.create_subprocess_exec(
        "git", *args, cwd=cwd, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL, env=env)
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
    point its ``release`` branch (and HEAD) at ``rev``'s commit, which is returned.
    (Who may fetch from where is the caller's check: ``local_path``, ``may_read``.)"""
    local = local_path(repo)
    await asyncio.to_thread(where.mkdir, parents=True)
    await _git("init", "-q", "--bare", str(where))
    await _git("fetch", "-q", "--no-tags", "--", repo, "+refs/heads/*:refs/heads/*",
               "+refs/tags/*:refs/tags/*", cwd=where,
               protocols=_PROTOCOLS + (":file" if local is not None else ""))
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
    build += "".join(f" --argstr {name} {shlex.quote(value)}"
                     for name, value in body.args.items())
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
    local = local_path(body.repo)
    if local is not None:
        await asyncio.to_thread(may_read, who, local, settings.builders.release_paths)
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
