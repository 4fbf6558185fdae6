"""``nixfarm builder list | show | destroy`` and ``nixfarm pool list``: the farm's
ephemeral builders, their pools and the autoscaler's decisions (admin token)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer
from rich.table import Column, Table

from nixfarm.cli.common import DataDir, JsonOut, Token, Url, out, print_json, with_client
from nixfarm.client.api import Client
from nixfarm.client.builders import BuildersClient
from nixfarm.wire.builders import BuilderDetail, BuilderOut, DecisionOut, PoolOut

builder_app = typer.Typer(help="Ephemeral builders: machines the farm creates for its "
                          "pools, and destroys.", no_args_is_help=True)
pool_app = typer.Typer(help="Builder pools (configured in [[builders.pools]]).",
                       no_args_is_help=True)

BuilderId = Annotated[int, typer.Argument(metavar="BUILDER", min=1, help="The builder's id.",
                                          show_default=False)]


def _when(at: datetime | None) -> str:
    return f"{at:%Y-%m-%d %H:%M:%S}" if at is not None else "-"


@builder_app.command("list")
def list_(all_: Annotated[bool, typer.Option("--all", help="Include destroyed builders.")
                          ] = False,
          pool: Annotated[str | None, typer.Option(help="Only this pool's.",
                                                   show_default=False)] = None,
          json_out: JsonOut = False, url: Url = None, token: Token = None,
          data_dir: DataDir = None) -> None:
    """List builders (live ones, newest first)."""
    async def work(c: Client) -> list[BuilderOut]:
        return await BuildersClient(c).builders(all_, pool)

    builders = with_client(url, token, data_dir, work)
    if json_out:
        print_json(builders)
        return
    table = Table("id", "name", "pool", "state", "ip", "job", "created",
                  Column("reason", overflow="fold"), box=None)
    for b in builders:
        table.add_row(str(b.id), b.name, b.pool, b.state, b.ip or "-",
                      str(b.last_job_id or "-"), _when(b.created_at), b.reason or "")
    out.print(table)


@builder_app.command()
def show(builder_id: BuilderId, json_out: JsonOut = False, url: Url = None,
         token: Token = None, data_dir: DataDir = None) -> None:
    """A builder, and every decision about it."""
    async def work(c: Client) -> BuilderDetail:
        return await BuildersClient(c).builder(builder_id)

    b = with_client(url, token, data_dir, work)
    if json_out:
        print_json(b)
        return
    for label, value in (
            ("builder", f"{b.id} {b.name}"), ("pool", b.pool),
            ("provider", f"{b.provider} {b.instance_id or '-'} ({b.region} {b.plan}, "
                         f"{b.hourly_price:g}/h)"),
            ("state", b.state + (f": {b.reason}" if b.reason else "")),
            ("ip", b.ip or "-"), ("runner", str(b.runner_id or "-")),
            ("last job", str(b.last_job_id or "-")), ("boot", b.boot_url),
            ("created", _when(b.created_at)), ("enrolled", _when(b.enrolled_at)),
            ("held until", _when(b.hold_until)), ("destroyed", _when(b.destroyed_at))):
        out.print(f"{label + ':':<12}{value}", markup=False, highlight=False)
    _decisions(b.decisions)


def _decisions(decisions: list[DecisionOut]) -> None:
    table = Table("when", "pool", "builder", "action", Column("why", overflow="fold"),
                  box=None, title="decisions")
    for d in reversed(decisions):
        table.add_row(_when(d.created_at), d.pool, str(d.builder_id or "-"), d.action,
                      d.reason)
    out.print(table)


@builder_app.command()
def destroy(builder_id: BuilderId, url: Url = None, token: Token = None,
            data_dir: DataDir = None) -> None:
    """Destroy a builder now: its runner token is revoked, its machine deleted."""
    async def work(c: Client) -> BuilderOut:
        return await BuildersClient(c).destroy(builder_id)

    b = with_client(url, token, data_dir, work)
    out.print(f"builder {b.id} ({b.name}) {b.state}", markup=False, highlight=False)


@pool_app.command("list")
def pools(decisions: Annotated[bool, typer.Option(
              "--decisions", help="Also print the autoscaler's latest decisions.")] = False,
          json_out: JsonOut = False, url: Url = None, token: Token = None,
          data_dir: DataDir = None) -> None:
    """List the builder pools: what they take, what they run and cost now."""
    async def work(c: Client) -> tuple[list[PoolOut], list[DecisionOut]]:
        client = BuildersClient(c)
        return await client.pools(), (await client.decisions(limit=30) if decisions else [])

    found, latest = with_client(url, token, data_dir, work)
    if json_out:
        print_json(found)
        return
    table = Table("name", "provider", "where", "builders", "queued", "spend/h", "lifecycle",
                  Column("takes", overflow="fold"), box=None)
    for p in found:
        cap = f"{p.max_hourly_spend:g}" if p.max_hourly_spend is not None else "-"
        takes = " ".join([p.arch, "images=" + ",".join(p.job_images)]
                         + (["tags=" + ",".join(p.job_tags)] if p.job_tags else [])
                         + (["caches=" + ",".join(p.caches)] if p.caches else []))
        table.add_row(p.name, p.provider, f"{p.region} {p.plan}".strip() or "-",
                      f"{p.builders}/{p.max_instances}", str(p.queued),
                      f"{p.hourly_spend:g}/{cap}", p.lifecycle, takes)
    out.print(table)
    if decisions:
        _decisions(latest)
