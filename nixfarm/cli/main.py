"""The ``nixfarm`` entry point: the command groups, and the only ``sys.exit``."""

from __future__ import annotations

import sys

import typer

from nixfarm.cli import cache, doctor, push, runner, token, up
from nixfarm.cli import jobs as jobs_cli
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
app.command("server")(up.server)
app.command("doctor")(doctor.doctor)
app.command("push")(push.push)
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
