"""``nixfarm schedule create|list|delete``: jobs the server submits on a cron schedule."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from nixfarm.cli.common import DataDir, JsonOut, Token, Url, out, print_json, with_client
from nixfarm.cli.jobs import _read
from nixfarm.client.api import Client
from nixfarm.client.schedules import SchedulesClient
from nixfarm.wire.schedules import ScheduleCreate, ScheduleOut

app = typer.Typer(help="Scheduled jobs: a manifest submitted at each slot of a cron "
                       "expression (UTC).", no_args_is_help=True)


@app.command("create")
def create(
    manifest: Annotated[Path, typer.Argument(help="The manifest (.build.yml) to submit.")],
    cron: Annotated[str, typer.Option(
        "--cron", help="When, as cron has it (UTC): 'MINUTE HOUR DAY MONTH WEEKDAY', "
                       "e.g. '0 3 * * *'; a sixth field, seconds, may follow.")],
    note: Annotated[str | None, typer.Option(help="A note for the schedule and its jobs.")]
    = None,
    json_out: JsonOut = False, url: Url = None, token: Token = None, data_dir: DataDir = None,
) -> None:
    """Submit MANIFEST as a job at each slot of --cron; print the schedule's id. The
    manifest is checked now, as submit would check it."""
    body = ScheduleCreate(cron=cron, manifest=_read(manifest), note=note)

    async def work(c: Client) -> ScheduleOut:
        return await SchedulesClient(c).create(body)

    made = with_client(url, token, data_dir, work)
    if json_out:
        print_json(made)
        return
    out.print(f"schedule {made.id}: next job at {made.next_at:%Y-%m-%d %H:%M:%S} UTC",
              markup=False)


@app.command("list")
def list_(json_out: JsonOut = False, url: Url = None, token: Token = None,
          data_dir: DataDir = None) -> None:
    """Your schedules (an admin's: everyone's)."""
    async def work(c: Client) -> list[ScheduleOut]:
        return await SchedulesClient(c).list()

    schedules = with_client(url, token, data_dir, work)
    if json_out:
        print_json(schedules)
        return
    table = Table("id", "cron", "next (UTC)", "last job", "owner", "note", box=None)
    for s in schedules:
        last = f"#{s.last_job_id}" if s.last_job_id else (f"error: {s.last_error}"
                                                          if s.last_error else "")
        table.add_row(str(s.id), s.cron, f"{s.next_at:%Y-%m-%d %H:%M:%S}", last, s.owner,
                      s.note or "")
    out.print(table)


@app.command("delete")
def delete(schedule: Annotated[int, typer.Argument(metavar="ID", help="The schedule's id.")],
           url: Url = None, token: Token = None, data_dir: DataDir = None) -> None:
    """Delete a schedule (jobs it already submitted stay)."""
    async def work(c: Client) -> ScheduleOut:
        return await SchedulesClient(c).delete(schedule)

    gone = with_client(url, token, data_dir, work)
    out.print(f"deleted schedule {gone.id} ({gone.cron})", markup=False)
