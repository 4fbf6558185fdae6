"""The ``nixfarm`` entry point: the command groups, and the only ``sys.exit``."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import pydantic
import typer
from typer._click.exceptions import ClickException

from nixfarm.cli import builders as builders_cli
from nixfarm.cli import cache, doctor, image, push, runner, schedules, shell, token, up, use
from nixfarm.cli import jobs as jobs_cli
from nixfarm.cli import ssh as ssh_cli
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
app.add_typer(image.app, name="image")
app.command("submit")(jobs_cli.submit)
app.command("release")(jobs_cli.release)
app.command("jobs")(jobs_cli.jobs)
app.command("logs")(jobs_cli.logs)
app.command("cancel")(jobs_cli.cancel)
app.command("shell")(shell.shell)
# ssh's own options (-L 8080:localhost:80, -v) pass through to ssh.
app.command("ssh", context_settings={"ignore_unknown_options": True})(ssh_cli.ssh)
app.command("ssh-relay", hidden=True)(ssh_cli.ssh_relay)
app.add_typer(jobs_cli.manifest_app, name="manifest")
app.add_typer(jobs_cli.secret_app, name="secret")
app.add_typer(builders_cli.builder_app, name="builder")
app.add_typer(builders_cli.pool_app, name="pool")
app.add_typer(schedules.app, name="schedule")


#: Metavars by parameter name, where the name in capitals would not say it best.
_METAVARS = {"data_dir": "DIR", "config_file": "FILE", "listen": "HOST:PORT",
             "older_than": "AGE", "scope": "SCOPE"}


def _plain_help(command: Any) -> None:
    """Help that speaks of values, not Python types: JOB, PATH..., [a|b], no
    ``<list[str]>`` nor ``{job}`` (typer's defaults), and nothing after a flag."""
    for param in command.params:
        if param.param_type_name == "argument":
            # typer writes a required one {name} in the usage, its type beside it.
            name = param.metavar or param.name.upper()
            if param.nargs != 1 and not name.endswith("..."):
                name = name.removesuffix("S") + "..."
            param.metavar = name
            param._usage_display_name = lambda name=name, p=param: (
                name if p.required else f"[{name}]")
            param.display_type_rich = lambda ctx: None
            continue
        if param.metavar is not None:
            continue
        if getattr(param, "is_flag", False):
            param.metavar = ""
            continue
        described = getattr(param, "type_descriptor", None)
        choices = [str(c) for c in (described.choices or ())] if described else []
        if described is not None and described.is_choice and len("|".join(choices)) <= 24:
            param.metavar = "[" + "|".join(choices) + "]"
            continue
        name = _METAVARS.get(param.name, param.name.upper().replace("_", "-"))
        if getattr(param, "multiple", False):
            name = name.removesuffix("S")
        param.metavar = name
    help_option = command.get_help_option

    def flag_help(ctx: Any) -> Any:
        option = help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = flag_help
    for sub in getattr(command, "commands", {}).values():
        _plain_help(sub)


def main() -> None:
    command = typer.main.get_command(app)
    _plain_help(command)
    # Not standalone: usage errors come here, to be said in one sentence, as others are.
    try:
        code = command.main(prog_name="nixfarm", standalone_mode=False)
    except Exit as e:
        sys.exit(e.code)
    except NixfarmError as e:
        err.print(f"error: {e.message}", markup=False)
        sys.exit(exit_code(e))
    except ClickException as e:
        if type(e).__name__ != "NoArgsIsHelpError":  # the help was the answer
            err.print(f"error: {usage_error(e)}", markup=False)
        sys.exit(e.exit_code)
    except typer.Abort:
        err.print("aborted", markup=False)
        sys.exit(1)
    except pydantic.ValidationError as e:
        # A request the command built from its options that the API would refuse: say
        # which value, as the server's 400 would, not a traceback.
        command_name = next((a for a in sys.argv[1:] if not a.startswith("-")), "")
        err.print(f"error: {invalid_value(e)} (see nixfarm {command_name} --help)",
                  markup=False)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


def invalid_value(error: pydantic.ValidationError) -> str:
    """The first problem of ``error`` in one sentence, naming the value's place."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"] if part != "[key]")
    return f"invalid {where or 'value'} {first.get('input')!r}: {first['msg']}"


def usage_error(error: ClickException) -> str:
    """Click's message, and where the usage is explained."""
    # The value checks typer makes with pydantic prefix their messages so.
    message = error.format_message().replace("Value error, ", "").rstrip(".")
    ctx = getattr(error, "ctx", None)
    where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
    return f"{message}{where}"
