"""First steps of a farm before it serves: schema, admin token, demo cache.

Run by ``nixfarm up`` in the parent process before the server starts, so a client
that sees ``server.json`` can rely on the token in ``admin.token`` being valid.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from nixfarm.auth import ADMIN
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
        token_file = settings.data_dir / "admin.token"
        existing = token_file.read_text().strip() if token_file.exists() else ""
        if not existing or await farm.tokens.authenticate(existing) is None:
            _, secret = await farm.tokens.create("admin (nixfarm up)", [ADMIN])
            _write_private(token_file, secret + "\n")
        if demo:
            try:
                await farm.caches.get(DEMO_CACHE)
            except NotFound:
                await farm.caches.create(DEMO_CACHE)
    finally:
        await farm.close()


def announce(settings: Settings) -> None:
    """Tell local clients where the farm listens (read by ``--data-dir``)."""
    (settings.data_dir / "server.json").write_text(
        json.dumps({"url": settings.base_url, "pid": os.getpid()}) + "\n")


def retract(settings: Settings) -> None:
    """The farm has stopped: local clients should say so rather than fail to connect."""
    (settings.data_dir / "server.json").unlink(missing_ok=True)
