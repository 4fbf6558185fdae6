"""First steps of a farm before it serves: schema, admin token, demo cache.

Run by ``nixfarm up`` in the parent process before the server starts, so a client
that sees ``server.json`` can rely on the token in ``admin.token`` being valid.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from nixfarm.auth import ADMIN, RUNNER
from nixfarm.config import Settings
from nixfarm.errors import NotFound
from nixfarm.farm import Farm

DEMO_CACHE = "demo"


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


async def prepare(settings: Settings, demo: bool) -> None:
    farm = await Farm.open(settings)
    try:
        await _ensure_token(farm, settings.data_dir / "admin.token", "admin (nixfarm up)",
                            [ADMIN])
        if settings.jobs.embedded_runner_slots > 0:
            await _ensure_token(farm, settings.data_dir / "runner.token",
                                "embedded runner (nixfarm up)", [RUNNER])
        if demo:
            try:
                await farm.caches.get(DEMO_CACHE)
            except NotFound:
                await farm.caches.create(DEMO_CACHE)
    finally:
        await farm.close()


def read_token(path: Path) -> str:
    """The token in ``path``, or "" when there is none (a small local file: read inline)."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


async def _ensure_token(farm: Farm, path: Path, name: str, scopes: list[str]) -> None:
    """Keep the token in ``path`` if it still works, else make and write a new one."""
    existing = read_token(path)
    if not existing or await farm.tokens.authenticate(existing) is None:
        _, secret = await farm.tokens.create(name, scopes)
        _write_private(path, secret + "\n")


def announce(settings: Settings) -> None:
    """Tell local clients where the farm listens (read by ``--data-dir``)."""
    (settings.data_dir / "server.json").write_text(
        json.dumps({"url": settings.base_url, "pid": os.getpid()}) + "\n")


def retract(settings: Settings) -> None:
    """The farm has stopped: local clients should say so rather than fail to connect."""
    (settings.data_dir / "server.json").unlink(missing_ok=True)
