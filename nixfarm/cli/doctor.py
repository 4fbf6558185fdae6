"""``nixfarm doctor``: every prerequisite check, each with its result and its fix."""

from __future__ import annotations

import anyio

from nixfarm.cli.common import Exit, out
from nixfarm.cli.up import ConfigOption, DataDirOption, ListenOption, load_settings


def doctor(data_dir: DataDirOption = None, listen: ListenOption = None,
           config_file: ConfigOption = None) -> None:
    """Check what the farm needs from this host (Nix, nginx, bubblewrap, the database,
    Redis, the object store) and print each result; exit 1 when a required piece is missing."""
    from nixfarm import prerequisites

    settings = load_settings(config_file, data_dir, listen, {})
    findings = anyio.run(prerequisites.run_all, prerequisites.everything(settings))
    width = max(len(f.name) for f in findings)
    for f in findings:
        mark = "ok" if f.ok else ("FAIL" if f.required else "warn")
        out.print(f"{mark:<5} {f.name:<{width}}  {f.detail}", markup=False)
        if not f.ok and f.fix:
            out.print(f"{'':<5} {'':<{width}}  fix: {f.fix}", markup=False)
    if any(f.required and not f.ok for f in findings):
        raise Exit(1)



