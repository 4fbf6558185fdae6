"""The ``nixfarm`` entry point: the command groups, and the only ``sys.exit``."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from nixfarm.cli import cache, doctor, push, runner, token, up, use
from nixfarm.cli import jobs as jobs_cli
from nixfarm.cli.common import Exit, err, out
from nixfarm.errors import NixfarmError, exit_code

app = typer.Typer(
    name="nixfarm",
    help="A build farm for Nix: CI jobs, signed binary caches, images from Nix packages.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # --install-completion / --show-completion for bash, zsh, fish and PowerShell.
    add_completion=True,
)


def _print_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import version

        out.print(f"nixfarm {version('nixfarm')}", markup=False)
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print nixfarm's version and exit.")] = False) -> None:
    """A build farm for Nix: CI jobs, signed binary caches, images from Nix packages."""
app.command("up")(up.up)
app.command("server")(up.server)
app.command("doctor")(doctor.doctor)
app.command("push")(push.push)
app.command("use")(use.use)
app.command("runner")(runner.runner)
app.add_typer(cache.app, name="cache")
app.add_typer(token.app, name="token")
app.command("submit")(jobs_cli.submit)
app.command("jobs")(jobs_cli.jobs)
app.command("logs")(jobs_cli.logs)
app.command("cancel")(jobs_cli.cancel)
app.add_typer(jobs_cli.manifest_app, name="manifest")
app.add_typer(jobs_cli.secret_app, name="secret")


def main() -> None:
    # Typer itself answers usage errors (exit 2) and exits 0 on success.
    try:
        app()
    except Exit as e:
        sys.exit(e.code)
    except NixfarmError as e:
        err.print(f"error: {e.message}", markup=False)
        sys.exit(exit_code(e))
