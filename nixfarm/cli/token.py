"""``nixfarm token``: create, list and revoke API tokens."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Column, Table

from nixfarm.cli.common import DataDir, JsonOut, Token, Url, out, print_json, with_client
from nixfarm.client.api import Client
from nixfarm.durations import EXAMPLES, parse_duration
from nixfarm.errors import InvalidInput
from nixfarm.wire.tokens import TokenOut, TokenPool

app = typer.Typer(help="API tokens and their scopes.", no_args_is_help=True)


@app.command()
def create(
    scope: Annotated[list[str], typer.Option(
        "--scope", help="admin, cache:NAME:pull, cache:NAME:push (NAME may be *), "
                        "jobs:submit, runner, registry:pull. Repeat for several.")],
    name: Annotated[str, typer.Option(help="What the token is for.")] = "token",
    expires_in: Annotated[str | None, typer.Option(
        "--expires-in", help=f"The token stops working after this long ({EXAMPLES}); "
        "without it, never.", show_default=False)] = None,
    images: Annotated[str | None, typer.Option(
        "--images", help="Runner tokens: claim only jobs of these images "
        "(comma-separated); without it, any.", show_default=False)] = None,
    owners: Annotated[str | None, typer.Option(
        "--owners", help="Runner tokens: claim only jobs submitted by these token names "
        "(comma-separated); without it, any.", show_default=False)] = None,
    untrusted: Annotated[bool, typer.Option(
        "--untrusted", help="Runner tokens: never claim a job that uses secrets.")] = False,
    url: Url = None, token: Token = None, data_dir: DataDir = None,
) -> None:
    """Create a token and print its secret (shown only once) alone on stdout."""
    expires_at = None
    if expires_in is not None:
        try:
            expires_at = datetime.now(UTC) + parse_duration(expires_in, field="expires_in")
        except OverflowError:
            raise InvalidInput(f"--expires-in {expires_in!r} is too far in the future",
                               field="expires_in") from None

    async def work(c: Client) -> TokenOut:
        return await c.create_token(name, scope, expires_at, _names(images),
                                    _names(owners), trusted=not untrusted)

    print(with_client(url, token, data_dir, work).secret)


def _names(text: str | None) -> list[str] | None:
    # Empty items are kept: the server refuses them with a message naming the field.
    return [n.strip() for n in text.split(",")] if text is not None else None


def _pool(t: TokenOut) -> str:
    """A runner token's pool in a few words; "" for no constraint."""
    parts = []
    if t.runner_images is not None:
        parts.append("images=" + ",".join(t.runner_images))
    if t.runner_owners is not None:
        parts.append("owners=" + ",".join(t.runner_owners))
    if not t.trusted:
        parts.append("untrusted")
    return " ".join(parts)


@app.command("list")
def list_(json_out: JsonOut = False, url: Url = None, token: Token = None,
          data_dir: DataDir = None) -> None:
    """List tokens (never their secrets)."""
    async def work(c: Client) -> list[TokenOut]:
        return await c.tokens()

    tokens = with_client(url, token, data_dir, work)
    if json_out:
        print_json(tokens)
        return
    # Folded, never cut with an ellipsis: a pool's owners are what an operator checks.
    table = Table("id", "name", "scopes", Column("runner pool", overflow="fold"), "created",
                  "last used", box=None)
    for t in tokens:
        table.add_row(str(t.id), t.name, " ".join(t.scopes), _pool(t),
                      f"{t.created_at:%Y-%m-%d %H:%M}",
                      f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "never")
    out.print(table)


@app.command()
def pool(
    token_id: int,
    images: Annotated[str | None, typer.Option(
        "--images", help="Claim only jobs of these images (comma-separated).",
        show_default=False)] = None,
    any_image: Annotated[bool, typer.Option(
        "--any-image", help="Drop the images constraint.")] = False,
    owners: Annotated[str | None, typer.Option(
        "--owners", help="Claim only jobs submitted by these token names "
        "(comma-separated).", show_default=False)] = None,
    any_owner: Annotated[bool, typer.Option(
        "--any-owner", help="Drop the owners constraint.")] = False,
    trusted: Annotated[bool | None, typer.Option(
        "--trusted/--untrusted", help="Whether its runners may claim jobs that use "
        "secrets.", show_default=False)] = None,
    url: Url = None, token: Token = None, data_dir: DataDir = None,
) -> None:
    """Change a runner token's pool; what is not given stays. Its runners' next claims
    follow it (a job already claimed runs on)."""
    if images is not None and any_image:
        raise typer.BadParameter("give --images or --any-image, not both",
                                 param_hint="--any-image")
    if owners is not None and any_owner:
        raise typer.BadParameter("give --owners or --any-owner, not both",
                                 param_hint="--any-owner")
    changes: dict[str, object] = {}
    if images is not None or any_image:
        changes["runner_images"] = _names(images)
    if owners is not None or any_owner:
        changes["runner_owners"] = _names(owners)
    if trusted is not None:
        changes["trusted"] = trusted
    if not changes:
        raise typer.BadParameter("nothing to change: give --images/--any-image, "
                                 "--owners/--any-owner or --trusted/--untrusted")
    body = TokenPool.model_validate(changes)

    async def work(c: Client) -> TokenOut:
        return await c.update_token_pool(token_id, body)

    changed = with_client(url, token, data_dir, work)
    out.print(f"token {changed.id} ({changed.name}): runner pool "
              f"{_pool(changed) or 'any image, any owner, trusted'}", markup=False)


@app.command()
def revoke(token_id: int, url: Url = None, token: Token = None,
           data_dir: DataDir = None) -> None:
    """Revoke a token by id."""
    async def work(c: Client) -> TokenOut:
        return await c.revoke_token(token_id)

    revoked = with_client(url, token, data_dir, work)
    out.print(f"revoked token {revoked.id} ({revoked.name})", markup=False)
