"""The ``cache push`` step: a job's Nix build outputs and their build logs, to its cache.

What counts as the job's outputs: the targets of the ``result*`` symlinks that
``nix-build`` left in the build user's home (a few directories deep). They are read
inside the sandbox, with the build user's view (``find`` and ``readlink``), so the
host never follows a link the job made. Each target must be a store path, top level,
valid in the host's store (where the runner's nix-daemon built it) and one of the
job's own paths (in its Nix proxy's view), or the step fails, naming the link;
links out of the store are skipped (and said so).

Then, with the job's grant (a token that may push to that one cache):

1. the outputs' closures are uploaded with ``nixfarm.client.push`` (only what the
   cache lacks; the server signs each narinfo with the cache's key);
2. for the outputs and every path this push uploaded, the build log of its deriver,
   if that derivation is the job's own (in its Nix proxy's view) and the host's Nix
   kept one (``nix-store --read-log``, where the daemon wrote it),
   is uploaded to ``PUT /cache/NAME/log/<drv>``, streamed, once per derivation: what
   ``nix log`` asks a binary cache for.

Every path and log pushed is named in the setup log.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from nixfarm.client.api import Client, Endpoint
from nixfarm.client.push import push
from nixfarm.errors import InvalidInput, NixfarmError, NotFound
from nixfarm.nix import command
from nixfarm.nix.storepath import STORE_DIR, StorePath
from nixfarm.runner.nixproxy import NixProxy
from nixfarm.runner.sandbox.base import BUILD_HOME
from nixfarm.runner.steps import CachePusher, JobContext
from nixfarm.wire.runners import CacheGrant

#: How deep under the home ``result*`` links are looked for (``~/src/result`` is 2).
SEARCH_DEPTH = 4
_FIND = (
    'find "$1" -maxdepth "$2" -name "result*" -type l 2>/dev/null | '
    'while read -r link; do printf "%s\\t%s\\n" "$link" "$(readlink "$link")"; done'
)
_CHUNK = 1 << 16


async def job_outputs(ctx: JobContext) -> list[str]:
    """The store paths the job's ``result*`` links point at; InvalidInput for a bad one."""
    lines: list[str] = []
    await ctx.box().run(["/bin/sh", "-c", _FIND, "sh", BUILD_HOME, str(SEARCH_DEPTH)],
                        lines.append)
    outputs: dict[str, None] = {}
    # A link may name any path of the host's store; only the job's own are pushed
    # (what its Nix socket let it add or build: see ``nixproxy``).
    proxy = job_proxy(ctx)
    for line in lines:
        link, _, target = line.partition("\t")
        if not target.startswith(STORE_DIR + "/"):
            ctx.setup(f"Not pushing {link}: it points at {target!r}, outside the Nix store")
            continue
        try:
            path = StorePath.parse(target)
        except InvalidInput:
            raise InvalidInput(f"{link} points at {target!r}, which is not a top-level "
                               "store path", field="result") from None
        if proxy is None:
            # Without the proxy nothing tells the job's paths from other tenants':
            # pushing would publish whatever host path a link names.
            raise NixfarmError("cache: needs a sandbox that gives the job its own Nix store "
                               "view (bwrap, vm); this runner's sandbox has none, so "
                               "nothing is pushed")
        if not await proxy.view.sees(str(path)):
            raise InvalidInput(f"{link} points at {path}, which is not a store path of this "
                               "job", field="result")
        outputs[str(path)] = None
    return list(outputs)


def job_proxy(ctx: JobContext) -> NixProxy | None:
    """The job's Nix proxy, which knows its store paths; None in a sandbox without one."""
    proxy = getattr(ctx.box(), "nix_proxy", None)
    assert proxy is None or isinstance(proxy, NixProxy)
    return proxy


def pusher(grant: CacheGrant) -> CachePusher:
    """The ``push_cache`` of a job that was granted ``grant``."""

    async def push_cache(ctx: JobContext) -> None:
        outputs = await job_outputs(ctx)
        if not outputs:
            ctx.setup(f"No result links in ~/ (depth {SEARCH_DEPTH}): nothing to push")
            return
        try:
            infos = await command.path_info(outputs)
        except NotFound as e:
            raise NixfarmError(f"{e.message} (a result link of the job points at it)") from e
        base = grant.url.removesuffix(f"/cache/{grant.name}")
        async with Client(Endpoint(base, grant.token), timeout=300.0) as client:
            uploaded = await push(client, grant.name, outputs, on_plan=lambda closure, missing,
                                  size: ctx.setup(f"Closure of {len(outputs)} output(s): "
                                                  f"{closure} paths, {missing} missing in "
                                                  f"{grant.name} ({size} NAR bytes)"))
            for path in uploaded:
                ctx.setup(f"Pushed {path}")
            derivers = [i.deriver for i in infos if i.deriver]
            derivers += [i.deriver for i in await command.path_info(uploaded) if i.deriver]
            # The host's store names one deriver per path, maybe another tenant's (a
            # fetcher's log may hold URLs with credentials): only the job's own logs go.
            proxy = job_proxy(ctx)
            for drv in dict.fromkeys(derivers):
                if proxy is None or drv not in proxy.view.paths:
                    continue
                if await _push_log(client, grant.name, drv):
                    ctx.setup(f"Pushed the build log of {drv}")
        ctx.setup(f"Cache {grant.name} has {', '.join(outputs)}")

    return push_cache


async def _push_log(client: Client, cache: str, drv: str) -> bool:
    """Upload ``drv``'s build log; False when the host's Nix has none."""
    process = await asyncio.create_subprocess_exec(
        "nix-store", "--read-log", drv, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
    assert process.stdout is not None
    stdout = process.stdout
    try:
        first = await stdout.read(_CHUNK)
        # Nothing printed: no log (never built here) unless Nix says the log is empty.
        if not first and await process.wait() != 0:
            return False

        async def body() -> AsyncIterator[bytes]:
            if first:
                yield first
            while chunk := await stdout.read(_CHUNK):
                yield chunk

        name = drv.rsplit("/", 1)[-1]
        await client.connection.send("PUT", f"/cache/{cache}/log/{name}", content=body())
        if await process.wait() != 0:
            raise NixfarmError(f"nix-store --read-log {drv} failed midway")
        return True
    finally:
        if process.returncode is None:
            process.kill()
            # Not wait(): asyncio reports the exit only once stdout reaches EOF, and a
            # stdout we stopped reading is paused and never would.
            await process.communicate()
