"""The runners page: every registered runner, what it offers, what it runs, when it was
last heard of; the farm's ephemeral builders (docs/builders.md) with their state; and a
builder's own page: its decisions and its console (boot, bootstrap, runner output),
refreshed while the machine lives.

Runners and builders are an admin's to see, as ``GET /api/v1/runners`` and
``/api/v1/builders`` are.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from fastapi import APIRouter, Request
from starlette.responses import Response

from nixfarm.db import browsing
from nixfarm.db.models import utcnow
from nixfarm.durations import describe
from nixfarm.scopes import ADMIN
from nixfarm.server.auth import farm_of
from nixfarm.server.netboot_routes import read_console
from nixfarm.server.pages import site
from nixfarm.wire.base import Id
from nixfarm.wire.runners import RunnerOut

router = APIRouter(include_in_schema=False)

#: A runner is "online" while it was heard of this recently: it long-polls for jobs
#: (at most a minute per poll) and heartbeats every third of a lease while it runs one.
ONLINE = timedelta(seconds=90)


def liveness(runner: RunnerOut, running: int, now: datetime) -> str:
    """``busy``, ``idle`` or ``offline``: the one rule every page judges runners by.

    Online while heard of within ``ONLINE`` (or its lease, if longer), or while the
    server has a job running on it: a busy runner's heartbeats renew its job's lease,
    not its own last-seen time, and a runner that is gone loses its jobs when their
    leases expire (``builds/runners.reap``)."""
    if running:
        return "busy"
    silent = now - runner.last_seen_at
    return "idle" if silent < max(ONLINE, timedelta(seconds=runner.lease_seconds)) \
        else "offline"


@router.get("/runners")
async def runners_page(request: Request, who: site.Viewer = site.VIEWER) -> Response:
    who.require(ADMIN)
    farm = farm_of(request)
    runners = await farm.builds.runners.runners()
    async with farm.db.session() as s:
        running = await browsing.running_jobs(s)
    now = utcnow()
    rows = [{"runner": r, "jobs": running.get(r.id, []),
             "online": liveness(r, len(running.get(r.id, [])), now) != "offline",
             "seen": f"{describe(now - r.last_seen_at, parts=1)} ago"} for r in runners]
    builders = await farm.builders.list_builders()
    return site.render(request, "runners.html", {"rows": rows, "builders": builders,
                                                 "pools": farm.settings.builders.pools})


#: The most of a builder's console its page shows (the end; the API has it all).
CONSOLE_TAIL = 256 * 1024


@router.get("/runners/builders/{builder_id}")
async def builder_page(request: Request, builder_id: Id,
                       who: site.Viewer = site.VIEWER) -> Response:
    who.require(ADMIN)
    farm = farm_of(request)
    builder = await farm.builders.show(builder_id)
    console, size = await read_console(farm.store, builder_id, tail=CONSOLE_TAIL)
    live = builder.state != "destroyed"
    return site.render(request, "builder.html", {
        "b": builder, "console": console.decode(errors="replace"), "live": live,
        "cut": size > len(console)})
