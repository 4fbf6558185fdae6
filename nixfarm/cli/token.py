"""``nixfarm token``: create, list and revoke API tokens."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from nixfarm.cli.common import DataDir, Token, Url, out, with_client
from nixfarm.client.api import Client
from nixfarm.durations import EXAMPLES, parse_duration
from nixfarm.errors import InvalidInput
from nixfarm.wire.tokens import TokenOut

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
        return await c.create_token(name, scope, expires_at)

    print(with_client(url, token, data_dir, work).secret)


@app.command("list")
def list_(url: Url = None, token: Token = None, data_dir: DataDir = None) -> None:
    """List tokens (never their secrets)."""
    async def work(c: Client) -> list[TokenOut]:
        return await c.tokens()

    table = Table("id", "name", "scopes", "created", "last used", box=None)
    for t in with_client(url, token, data_dir, work):
        table.add_row(str(t.id), t.name, " ".join(t.scopes), f"{t.created_at:%Y-%m-%d %H:%M}",
                      f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "never")
    out.print(table)


@app.command()
def revoke(token_id: int, url: Url = None, token: Token = None,
           data_dir: DataDir = None) -> None:
    """Revoke a token by id."""
    async def work(c: Client) -> TokenOut:
        return await c.revoke_token(token_id)

    revoked = with_client(url, token, data_dir, work)
    out.print(f"revoked token {revoked.id} ({revoked.name})", markup=False)
