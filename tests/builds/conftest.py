"""Fixtures of the job service tests: the build services on a real database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from nixfarm import config
from nixfarm.builds.services import BuildServices
from nixfarm.cache.service import CacheService
from nixfarm.db.engine import Database
from nixfarm.events.memory import MemoryBus
from nixfarm.storage.factory import open_store
from nixfarm.tokens import Principal, TokenService


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


MakeBuilds = Callable[..., BuildServices]


@pytest.fixture
async def make_builds(db: Database, tmp_path: Path) -> AsyncIterator[MakeBuilds]:
    """Build services on the test's database; keyword arguments set ``jobs.*``
    (``registry``: the registry section; ``complete``: the services are the farm's
    only server, ``EventBus.complete``)."""
    buses: list[MemoryBus] = []

    def make(registry: dict[str, object] | None = None, *, complete: bool = False,
             **jobs: object) -> BuildServices:
        settings = config.load(environ={}, overrides={
            "data_dir": str(tmp_path), "jobs": {"images": ["nix", "alpine/edge"], **jobs},
            "registry": registry or {}})
        store = open_store(settings)
        bus = MemoryBus(complete=complete)
        buses.append(bus)
        tokens = TokenService(db)
        return BuildServices.open(settings, db, store, bus, CacheService(db, store, settings),
                                  tokens, bytes(range(32)))

    yield make
    for bus in buses:
        await bus.close()


async def principal(db: Database, name: str, *scopes: str) -> Principal:
    """A real token's principal."""
    tokens = TokenService(db)
    _, secret = await tokens.create(name, scopes)
    found = await tokens.authenticate(secret)
    assert found is not None
    return found
