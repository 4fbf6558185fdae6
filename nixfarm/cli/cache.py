"""``nixfarm cache``: create, list and inspect binary caches; print a public key."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from nixfarm.cli.common import DataDir, Token, Url, out, with_client
from nixfarm.client.api import Client
from nixfarm.wire import CacheOut

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
def list_(url: Url = None, token: Token = None, data_dir: DataDir = None) -> None:
    """List the caches you can see."""
    async def work(c: Client) -> list[CacheOut]:
        return await c.caches()

    table = Table("name", "visibility", "url", box=None)
    for cache in with_client(url, token, data_dir, work):
        table.add_row(cache.name, "private" if cache.private else "public", cache.url)
    out.print(table)


@app.command()
def info(name: str, url: Url = None, token: Token = None, data_dir: DataDir = None) -> None:
    """Show a cache: URL, visibility, public key, size."""
    async def work(c: Client) -> CacheOut:
        return await c.cache(name)

    _show(with_client(url, token, data_dir, work))


@app.command()
def key(name: str, url: Url = None, token: Token = None, data_dir: DataDir = None) -> None:
    """Print the cache's public key (name:base64), alone, for trusted-public-keys."""
    async def work(c: Client) -> CacheOut:
        return await c.cache(name)

    print(with_client(url, token, data_dir, work).public_key)
