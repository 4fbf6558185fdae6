"""The ``nixfarm`` entry point: the command groups, and the only ``sys.exit``."""

from __future__ import annotations

import sys

import typer
from click.exceptions import ClickException

from nixfarm.cli import cache, push, token, up
from nixfarm.cli.common import Exit, err, exit_code
from nixfarm.errors import NixfarmError

app = typer.Typer(
    name="nixfarm",
    help="A build farm for Nix: CI jobs, signed binary caches, images from Nix packages.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("up")(up.up)
app.command("push")(push.push)
app.add_typer(cache.app, name="cache")
app.add_typer(token.app, name="token")


def main() -> None:
    try:
        app(standalone_mode=False)
    except Exit as e:
        sys.exit(e.code)
    except NixfarmError as e:
        err.print(f"error: {e.message}", markup=False)
        sys.exit(exit_code(e))
    except ClickException as e:
        e.show()
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except typer.Abort:
        sys.exit(1)
    sys.exit(0)
