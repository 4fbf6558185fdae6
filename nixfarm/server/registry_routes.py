"""The OCI distribution pull API under ``/v2/``, its token endpoint, and the build board.

What a pull looks like (skopeo, podman, docker): ``GET /v2/`` (401 with a Bearer
challenge when the registry requires auth: the client then fetches
``/registry/token`` with the user's credentials and retries with that token), then
``GET``/``HEAD /v2/<name>/manifests/<tag>`` with the manifest types it accepts, then
``GET /v2/<name>/blobs/<digest>`` for the config and every layer it lacks.

Blobs from the filesystem store go out as ``FileResponse`` (Range and HEAD handled by
Starlette; under Granian the file is sent by the server, not read through Python), from
S3 as a 307 to a presigned URL. Errors are mapped in ``server/errors.py``.
"""

from __future__ import annotations

import html
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import BaseRoute, Route

from nixfarm.errors import NotFound, Unauthorized
from nixfarm.registry.buildboard import Build
from nixfarm.registry.service import RegistryService
from nixfarm.scopes import REGISTRY_PULL
from nixfarm.server.auth import credentials, farm_of, require, require_pull
from nixfarm.server.downloads import send

_API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}


def _registry(request: Request) -> RegistryService:
    registry: RegistryService = farm_of(request).registry
    return registry


async def _check_access(request: Request) -> None:
    if farm_of(request).settings.registry.require_auth:
        await require_pull(request)


async def base(request: Request) -> Response:
    await _check_access(request)
    return JSONResponse({}, headers=_API_VERSION)


async def token(request: Request) -> Response:
    """The token endpoint of the Bearer flow: basic auth with a nixfarm token in, token out.

    The token handed back is a short-lived pull token (see ``registry/pulltokens.py``):
    it can only pull, expires after ``registry.token_seconds``, and dies with the
    nixfarm token it was issued for. A pull token cannot get another one.
    """
    secret = credentials(request)
    if secret is None:
        raise Unauthorized("log in with a nixfarm token that has scope 'registry:pull' as the "
                           "password (any user name)")
    who = await require(request, REGISTRY_PULL)
    seconds = farm_of(request).settings.registry.token_seconds
    now = time.time()
    minted = farm_of(request).pull_tokens.mint(who.token_id, seconds, now)
    issued = datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return JSONResponse({"token": minted, "access_token": minted, "expires_in": seconds,
                         "issued_at": issued})


async def tags(request: Request) -> Response:
    await _check_access(request)
    name = request.path_params["name"]
    return JSONResponse({"name": name, "tags": _registry(request).tags(name)},
                        headers=_API_VERSION)


async def manifest(request: Request) -> Response:
    await _check_access(request)
    accept = ",".join(request.headers.getlist("accept"))
    answer = await _registry(request).manifest(
        request.path_params["name"], request.path_params["reference"], accept,
        uri=request.scope["path"])
    headers = {**_API_VERSION, "Docker-Content-Digest": str(answer.digest),
               "Content-Length": str(len(answer.body))}
    body = b"" if request.method == "HEAD" else answer.body
    return Response(body, 200, media_type=answer.media_type, headers=headers)


async def blob(request: Request) -> Response:
    await _check_access(request)
    found = await _registry(request).blob(request.path_params["name"],
                                          request.path_params["digest"])
    # Sent by nginx when it is in front: after the token was checked here.
    return await send(request, found.file, "application/octet-stream",
                      {**_API_VERSION, "Docker-Content-Digest": str(found.digest)})


async def unsupported(request: Request) -> Response:
    await _check_access(request)
    raise NotFound(f"{request.method} {request.url.path} is not part of this registry's "
                   "pull API.", kind="endpoint", name=request.url.path)


async def _build(request: Request) -> Build:
    await _check_access(request)
    build_id = request.path_params["id"]
    found = _registry(request).builds.get(build_id)
    if found is None:
        raise NotFound(f"No recent build has id {build_id!r}.", kind="build", name=build_id)
    return found


async def builds(request: Request) -> Response:
    """Recent image builds, newest first (JSON)."""
    await _check_access(request)
    return JSONResponse({"builds": [b.summary() for b in _registry(request).builds.recent()]})


async def build_log(request: Request) -> Response:
    """The build's log as plain text, streamed line by line while the build runs."""
    build = await _build(request)

    async def lines() -> AsyncIterator[bytes]:
        async for line in build.follow():
            yield (line + "\n").encode()

    return StreamingResponse(lines(), media_type="text/plain; charset=utf-8",
                             headers={"X-Content-Type-Options": "nosniff"})


_PAGE = """<!doctype html>
<meta charset="utf-8"><title>build {id}</title>
<style>body{{font-family:sans-serif;margin:2em}}pre{{background:#111;color:#ddd;padding:1em;
white-space:pre-wrap}}</style>
<h1>Image {image}</h1><p>Build <code>{id}</code>: <b id="state">{state}</b> {message}</p>
<pre id="log"></pre>
<script>
(async () => {{
  const pre = document.getElementById("log");
  const reader = (await fetch("{id}/log")).body.getReader();
  const decoder = new TextDecoder();
  for (;;) {{
    const {{done, value}} = await reader.read();
    if (done) break;
    pre.textContent += decoder.decode(value, {{stream: true}});
  }}
  const info = await (await fetch("../builds")).json();
  const me = info.builds.find(b => b.id === "{id}");
  if (me) document.getElementById("state").textContent = me.state + " " + me.message;
}})();
</script>
"""


async def build_page(request: Request) -> Response:
    """An HTML page that follows the build's log live."""
    build = await _build(request)
    return HTMLResponse(_PAGE.format(id=html.escape(build.id), image=html.escape(build.image),
                                     state=html.escape(build.state),
                                     message=html.escape(build.message)))


_READ = ["GET", "HEAD"]

#: Relative to ``/v2`` (the OCI protocol's mount).
oci_routes: list[BaseRoute] = [
    Route("/", base, methods=_READ),
    Route("/{name:path}/tags/list", tags, methods=_READ),
    Route("/{name:path}/manifests/{reference}", manifest, methods=_READ),
    Route("/{name:path}/blobs/{digest}", blob, methods=_READ),
    Route("/{rest:path}", unsupported, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]),
]
#: Relative to ``/registry``: the token endpoint and the build board (plain-text errors).
board_routes: list[BaseRoute] = [
    Route("/token", token, methods=["GET"]),
    Route("/builds", builds, methods=["GET"]),
    Route("/builds/{id}", build_page, methods=["GET"]),
    Route("/builds/{id}/log", build_log, methods=["GET"]),
]
