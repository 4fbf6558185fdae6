"""``nixfarm up``: the whole farm in one foreground process."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from nixfarm.cli.common import err


def up(
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", envvar="NIXFARM_DATA_DIR", help="Where the farm keeps its state.")] = None,
    listen: Annotated[str | None, typer.Option(help="HOST:PORT to listen on.")] = None,
    demo_set: Annotated[bool, typer.Option(
        "--demo", help="Serve the bundled demo package set and create a demo cache.")] = False,
    config_file: Annotated[Path | None, typer.Option(
        "--config", help="A TOML configuration file (see docs/config.example.toml).")] = None,
) -> None:
    """Run the farm in the foreground until interrupted (Ctrl-C stops it gracefully)."""
    # Imported here: every other command starts faster without the server's modules.
    from granian import Granian
    from granian.constants import Interfaces

    from nixfarm import bootstrap, config, demo
    from nixfarm.config import SETTINGS_VARIABLE

    overrides: dict[str, Any] = {}
    if data_dir is not None:
        overrides["data_dir"] = str(data_dir)
    if listen is not None:
        overrides["listen"] = listen
    if demo_set:
        overrides["registry"] = {"source": {"kind": "path", "location": str(demo.path())}}
        # The demo set is built from local files only: asking substituters is wasted time.
        overrides["nix_options"] = {"substituters": ""}
    settings = config.load(config_file, overrides=overrides)
    settings = settings.model_copy(update={"data_dir": settings.data_dir.resolve()})
    bootstrap.prepare_in_child(settings, demo_set)
    bootstrap.announce(settings)
    os.environ[SETTINGS_VARIABLE] = settings.model_dump_json()
    err.print(f"nixfarm listening on {settings.base_url}; admin token in "
              f"{settings.data_dir / 'admin.token'}", markup=False)
    if demo_set:
        err.print(f"demo cache: {settings.base_url}/cache/{bootstrap.DEMO_CACHE}", markup=False)
    try:
        Granian(
            "nixfarm.server.app:from_environment",
            address=settings.host,
            port=settings.port,
            interface=Interfaces.ASGI,
            factory=True,
            workers=1,
            log_access=False,
        ).serve()
    finally:
        bootstrap.retract(settings)
