"""First steps of a farm before it serves: schema, admin token, demo cache.

Run by ``nixfarm up`` in the parent process before the server starts, so a client
that sees ``server.json`` can rely on the token in ``admin.token`` being valid
(the data directory's files: ``datadir.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from nixfarm.config import SETTINGS_VARIABLE, Settings
from nixfarm.datadir import ADMIN_TOKEN, RUNNER_TOKEN, read_token, write_private
from nixfarm.errors import NotFound

if TYPE_CHECKING:
    from nixfarm.farm import Farm

DEMO_CACHE = "demo"


async def prepare(settings: Settings, demo: bool) -> None:
    # Imported here: ``nixfarm up``'s own process imports this module too, and should
    # not carry the database and services (see ``prepare_in_child``).
    from nixfarm.farm import Farm
    from nixfarm.scopes import ADMIN, RUNNER

    farm = await Farm.open(settings)
    try:
        await _ensure_token(farm, settings.data_dir / ADMIN_TOKEN, "admin (nixfarm up)",
                            [ADMIN])
        if settings.jobs.embedded_runner_slots > 0:
            await _ensure_token(farm, settings.data_dir / RUNNER_TOKEN,
                                "embedded runner (nixfarm up)", [RUNNER])
        if demo:
            try:
                await farm.caches.get(DEMO_CACHE)
            except NotFound:
                await farm.caches.create(DEMO_CACHE)
    finally:
        await farm.close()


async def _ensure_token(farm: Farm, path: Path, name: str, scopes: list[str]) -> None:
    """Keep the token in ``path`` if it still works, else make and write a new one."""
    existing = read_token(path)
    if not existing or await farm.tokens.authenticate(existing) is None:
        _, secret = await farm.tokens.create(name, scopes)
        write_private(path, secret + "\n")


def announce(settings: Settings) -> Path:
    """Tell local clients where the farm listens (read by ``--data-dir``); the file, which
    the supervisor removes when the farm stops (clients then say so rather than fail
    to connect)."""
    path = settings.data_dir / "server.json"
    path.write_text(json.dumps({"url": settings.base_url, "pid": os.getpid()}) + "\n")
    return path


def prepare_in_child(settings: Settings, demo: bool) -> int:
    """``prepare`` in a child process, which exits afterwards; its exit status (0: done).

    The server's supervising process lives as long as the farm; the database, Alembic
    and every service module that preparing loads would stay in its memory for
    nothing (about 50 MB), so that work happens in a process of its own. A failure
    there is told in one sentence on stderr, by the child itself.
    """
    env = {**os.environ, SETTINGS_VARIABLE: settings.model_dump_json()}
    args = [sys.executable, "-m", "nixfarm.bootstrap", *(["--demo"] if demo else [])]
    return subprocess.run(args, env=env, check=False).returncode


def _prepare_here() -> int:
    import anyio

    from nixfarm.errors import NixfarmError, exit_code

    settings = Settings.model_validate_json(os.environ[SETTINGS_VARIABLE])
    try:
        anyio.run(prepare, settings, "--demo" in sys.argv[1:])
    except NixfarmError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return exit_code(e)
    except Exception as e:  # the database or the disk failed in a way no check foresaw
        cause = str(getattr(e, "orig", None) or e).strip().splitlines()
        print(f"error: preparing the farm in {settings.data_dir} failed: "
              f"{type(e).__name__}: {cause[0] if cause else 'no message'} "
              "(nixfarm doctor checks the host)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_prepare_here())
