"""``nixfarm up`` (the whole farm in one process) and ``nixfarm server`` (one of many)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from nixfarm.cli.common import Exit, err

if TYPE_CHECKING:
    from nixfarm.config import Settings

DataDirOption = Annotated[Path | None, typer.Option(
    "--data-dir", envvar="NIXFARM_DATA_DIR", show_default=False,
    help="Where the farm keeps its state (default: ./data, relative to the directory "
         "nixfarm is started in).")]
ListenOption = Annotated[str | None, typer.Option(help="HOST:PORT to listen on.")]
ConfigOption = Annotated[Path | None, typer.Option(
    "--config", envvar="NIXFARM_CONFIG", show_default=False,
    help="A TOML configuration file (default: DATA_DIR/nixfarm.toml if it exists); every "
         "key is in docs/config.example.toml.")]


def up(
    data_dir: DataDirOption = None,
    listen: ListenOption = None,
    demo_set: Annotated[bool, typer.Option(
        "--demo", help="Serve the bundled demo package set and create a demo cache.")] = False,
    config_file: ConfigOption = None,
) -> None:
    """Run the farm in the foreground until interrupted (Ctrl-C stops it gracefully)."""
    from nixfarm import demo

    overrides: dict[str, Any] = {}
    if demo_set:
        overrides["registry"] = {"source": {"kind": "path", "location": str(demo.path())}}
        # The demo set is built from local files only: asking substituters is wasted time.
        overrides["nix_options"] = {"substituters": ""}
    _serve("up", config_file, data_dir, listen, overrides, demo=demo_set, workers=1)


def server(
    data_dir: DataDirOption = None,
    listen: ListenOption = None,
    config_file: ConfigOption = None,
    workers: Annotated[int, typer.Option(help="Worker processes.", min=1)] = 1,
) -> None:
    """Run one server of a scale-out farm (no embedded runner): point several at one
    PostgreSQL (database_url), one S3 bucket (storage) and one Redis (redis_url)."""
    _serve("server", config_file, data_dir, listen, {"jobs": {"embedded_runner_slots": 0}},
           demo=False, workers=workers)


def load_settings(config_file: Path | None, data_dir: Path | None, listen: str | None,
                  overrides: dict[str, Any]) -> Settings:
    """The settings of a farm started with these options (``up``, ``server``, ``doctor``)."""
    from nixfarm import config

    if data_dir is not None:
        overrides["data_dir"] = str(data_dir)
    if listen is not None:
        overrides["listen"] = listen
    return config.load(config_file, overrides=overrides)


#: The pool ``up --demo`` configures when the configuration has none: one local VM at a
#: time, for release builds (jobs tagged ``release``) pushing to the demo cache.
DEMO_POOL = "demo-local"


def _with_demo_pool(settings: Settings) -> Settings:
    from nixfarm import bootstrap
    from nixfarm.config import PoolSettings

    pool = PoolSettings(name=DEMO_POOL, provider="local", max_instances=1,
                        job_tags=("release",), caches=(bootstrap.DEMO_CACHE,))
    # The image is made by the first release build, not at every demo's start.
    return settings.model_copy(update={
        "builders": settings.builders.model_copy(update={"pools": (pool,),
                                                         "prepare_netboot": False})})


def _serve(part: str, config_file: Path | None, data_dir: Path | None, listen: str | None,
           overrides: dict[str, Any], *, demo: bool, workers: int) -> None:
    # Imported here: every other command starts faster without the server's modules.
    from nixfarm import bootstrap, farmlock, hardening, prerequisites, supervisor
    from nixfarm.config import SETTINGS_VARIABLE, WORKERS_VARIABLE
    from nixfarm.edge import nginx as edge_nginx
    from nixfarm.edge.layout import EdgeLayout

    settings = load_settings(config_file, data_dir, listen, overrides)
    if demo and not settings.builders.pools:
        settings = _with_demo_pool(settings)
    # Before anything is written or announced: a farm missing a piece says so now,
    # not at the first request that needs it.
    prerequisites.require(part, prerequisites.for_server(
        settings, runner=settings.jobs.embedded_runner_slots > 0))
    farmlock.hold(settings.data_dir)
    _check_address_free(settings.host, settings.port)
    nginx_binary = edge_nginx.binary(settings)
    # The worker learns from the settings whether nginx is in front ("auto" resolved).
    settings = settings.model_copy(update={
        "data_dir": settings.data_dir.resolve(),
        "edge": settings.edge.model_copy(update={"server": "nginx" if nginx_binary else "none"}),
    })
    failed = bootstrap.prepare_in_child(settings, demo)
    if failed:
        raise Exit(failed)  # the child said why, in one sentence
    layout = EdgeLayout.of(settings)
    store_root = settings.storage_path.resolve() if settings.storage.kind == "fs" else None
    if nginx_binary is not None:
        layout.reset()
        layout.config.write_text(edge_nginx.render(settings, layout, store_root))
        edge_nginx.check(nginx_binary, layout)
    hardening.protect(settings.data_dir, store_root, layout.run if nginx_binary else None)
    announced = bootstrap.announce(settings)
    err.print(f"nixfarm listening on {settings.base_url}"
              f"{' (nginx in front)' if nginx_binary else ''}; admin token in "
              f"{settings.data_dir / 'admin.token'}", markup=False)
    if demo:
        err.print(f"demo cache: {settings.base_url}/cache/{bootstrap.DEMO_CACHE}", markup=False)
    if settings.registry.source.kind == "none":
        err.print("no Nix package source: image pulls and `image: nix` jobs are refused "
                  "until [registry.source] names one (a nixpkgs path, git repository or "
                  "channel; see docs/registry.md), or start with --demo", markup=False)
    plan = {"host": settings.host, "port": settings.port, "workers": workers,
            "nginx": nginx_binary, "edge_root": str(layout.root),
            "announce": str(announced), "grace": settings.jobs.shutdown_grace_seconds}
    env = {**os.environ, SETTINGS_VARIABLE: settings.model_dump_json(),
           WORKERS_VARIABLE: str(workers),
           supervisor.PLAN_VARIABLE: json.dumps(plan)}
    sys.stderr.flush()
    # Same process id, without this command's libraries (see nixfarm/supervisor.py).
    os.execve(sys.executable, [sys.executable, "-m", "nixfarm.supervisor"], env)


def _check_address_free(host: str, port: int) -> None:
    """Refuse now, not after announcing, when something else listens on the address
    (nginx or Granian would fail to bind later, behind a "listening" banner)."""
    import errno
    import socket

    from nixfarm.errors import Conflict

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
            if e.errno == errno.EADDRINUSE:
                raise Conflict(f"{where} is in use by another program; stop it or choose "
                               "another address with --listen") from None
            raise Conflict(f"cannot listen on {where}: {e.strerror}; choose another "
                           "address with --listen") from None
