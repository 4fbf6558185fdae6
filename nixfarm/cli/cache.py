"""``nixfarm cache``: create, list and inspect binary caches; print a public key; collect
garbage."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from nixfarm.cli.common import DataDir, JsonOut, Token, Url, out, print_json, with_client
from nixfarm.client.api import Client
from nixfarm.durations import EXAMPLES, parse_duration
from nixfarm.errors import InvalidInput
from nixfarm.sizes import describe_size
from nixfarm.wire.caches import CacheOut, GcReport

app = typer.Typer(help="Signed Nix binary caches.", no_args_is_help=True)


def _show(cache: CacheOut) -> None:
    out.print(f"name:       {cache.name}", markup=False)
    out.print(f"url:        {cache.url}", markup=False)
    out.print(f"visibility: {'private' if cache.private else 'public'}", markup=False)
    out.print(f"public key: {cache.public_key}", markup=False)
    out.print(f"priority:   {cache.priority}", markup=False)
    if cache.paths is not None:
        out.print(f"paths:      {cache.paths}", markup=False)


@app.command()
def create(
    name: str,
    private: Annotated[bool, typer.Option("--private", help="Pulling needs a token.")] = False,
    priority: Annotated[int | None, typer.Option(help="nix-cache-info Priority.")] = None,
    url: Url = None, token: Token = None, data_dir: DataDir = None,
) -> None:
    """Create a cache with its own signing key."""
    async def work(c: Client) -> CacheOut:
        return await c.create_cache(name, private, priority)

    _show(with_client(url, token, data_dir, work))


@app.command("list")
def list_(json_out: JsonOut = False, url: Url = None, token: Token = None,
          data_dir: DataDir = None) -> None:
    """List the caches you can see."""
    async def work(c: Client) -> list[CacheOut]:
        return await c.caches()

    caches = with_client(url, token, data_dir, work)
    if json_out:
        print_json(caches)
        return
    table = Table("name", "visibility", "url", box=None)
    for cache in caches:
        table.add_row(cache.name, "private" if cache.private else "public", cache.url)
    out.print(table)


@app.command()
def info(name: str, json_out: JsonOut = False, url: Url = None, token: Token = None,
         data_dir: DataDir = None) -> None:
    """Show a cache: URL, visibility, public key, size."""
    async def work(c: Client) -> CacheOut:
        return await c.cache(name)

    cache = with_client(url, token, data_dir, work)
    if json_out:
        print_json(cache)
        return
    _show(cache)


@app.command()
def key(name: str, url: Url = None, token: Token = None, data_dir: DataDir = None) -> None:
    """Print the cache's public key (name:base64), alone, for trusted-public-keys."""
    async def work(c: Client) -> CacheOut:
        return await c.cache(name)

    print(with_client(url, token, data_dir, work).public_key)


_MAX_DAYS = 36500


def older_than_days(text: str) -> float:
    """``--older-than`` as a number of days (what the API takes); ``InvalidInput`` if bad."""
    duration = parse_duration(text, field="older_than")
    days = duration.total_seconds() / 86400
    if not 0 < days <= _MAX_DAYS:
        raise InvalidInput(f"--older-than {text!r} must be more than 0 and at most "
                           f"{_MAX_DAYS}d", field="older_than")
    return days


def _size(n: int) -> str:
    return f"{describe_size(n)} ({n} B)" if n >= 1024 else describe_size(n)


@app.command()
def gc(
    name: str,
    older_than: Annotated[str, typer.Option(
        "--older-than", help=f"Remove paths uploaded longer ago than this ({EXAMPLES}; "
        "'m' is refused: minutes or months?), unless a newer path needs them.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report.")] = False,
    url: Url = None, token: Token = None, data_dir: DataDir = None,
) -> None:
    """Collect garbage: old paths nothing newer needs, their logs and NAR files (admin)."""
    days = older_than_days(older_than)

    async def work(c: Client) -> GcReport:
        return await c.collect_garbage(name, days, dry_run)

    report = with_client(url, token, data_dir, work)
    dry = " (dry run: nothing was removed)" if report.dry_run else ""
    for label, value in (
        ("cache", f"{report.cache}{dry}"),
        ("cutoff", report.cutoff.isoformat(timespec="seconds")),
        ("paths removed", str(report.paths_removed)),
        ("paths kept", f"{report.paths_kept} (older, but needed by newer paths)"),
        ("NAR files removed", str(report.nar_files_removed)),
        ("logs removed", str(report.logs_removed)),
        ("bytes freed", _size(report.bytes_freed)),
    ):
        out.print(f"{label + ':':<19}{value}", markup=False)
