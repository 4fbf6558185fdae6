"""Fixtures of the builder tests: the fake Vultr API on 127.0.0.1, and the farm's
services (builds, tokens, builders, the autoscaler) on a real database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nixfarm import config
from nixfarm.builders.autoscaler import Autoscaler
from nixfarm.builders.providers import open_providers
from nixfarm.builders.service import BuilderService
from nixfarm.builds.services import BuildServices
from nixfarm.cache.service import CacheService
from nixfarm.db.engine import Database
from nixfarm.events.memory import MemoryBus
from nixfarm.storage.factory import open_store
from nixfarm.tokens import Principal, TokenService
from nixfarm.wire.jobs import JobOut, JobSubmit
from tests.builders.fakevultr import KEY, FakeVultr, running


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def vultr() -> Iterator[FakeVultr]:
    with running() as fake:
        yield fake


def pool(**overrides: Any) -> dict[str, Any]:
    """A vultr pool for the fake API; keyword arguments override its keys."""
    return {"name": "vx", "provider": "vultr", "region": "ewr", "plan": "vc2-1c-1gb",
            "hourly_price": 0.01, "max_instances": 2, "caches": ["rel"], **overrides}


def builder_settings(vultr: FakeVultr, pools: list[dict[str, Any]],
                     **builders: Any) -> dict[str, Any]:
    """The ``[builders]`` section: the fake Vultr, quick back-off, these pools."""
    return {"farm_id": "test", "vultr": {"api_key": KEY, "api_url": vultr.url,
                                         "backoff_seconds": 0.05, "request_seconds": 10},
            "pools": pools, **builders}


@dataclass
class Stack:
    settings: config.Settings
    db: Database
    builds: BuildServices
    tokens: TokenService
    builders: BuilderService
    scaler: Autoscaler
    admin: Principal

    async def submit(self, manifest: str, tags: list[str] | None = None) -> JobOut:
        return await self.builds.jobs.submit(
            self.admin, JobSubmit(manifest=manifest, tags=tags or []))


MakeStack = Callable[..., Any]


@pytest.fixture
async def make_stack(db: Database, tmp_path: Path,
                     vultr: FakeVultr) -> AsyncIterator[Callable[..., Any]]:
    """``await make_stack(pools=[pool(...)], **builders)``: the services of one server."""
    made: list[tuple[MemoryBus, BuilderService]] = []

    async def make(pools: list[dict[str, Any]] | None = None, **builders: Any) -> Stack:
        settings = config.load(environ={}, overrides={
            "data_dir": str(tmp_path), "public_url": "http://farm.test:8080",
            "jobs": {"images": ["nix", "alpine/edge"], "lease_seconds": 30},
            "builders": builder_settings(vultr, pools if pools is not None else [pool()],
                                         **builders)})
        store = open_store(settings)
        bus = MemoryBus()
        tokens = TokenService(db)
        caches = CacheService(db, store, settings)
        builds = BuildServices.open(settings, db, store, bus, caches, tokens, bytes(range(32)))
        service = BuilderService(db, settings, tokens, open_providers(settings))
        made.append((bus, service))
        _, secret = await tokens.create("admin", ["admin"])
        admin = await tokens.authenticate(secret)
        assert admin is not None
        for name in ("rel", "other"):
            if name not in [c.name for c in await caches.all()]:
                await caches.create(name)
        return Stack(settings, db, builds, tokens, service, Autoscaler(service, builds.jobs), admin)

    yield make
    for bus, service in made:
        await service.close()
        await bus.close()


def manifest(image: str = "nix", cache: str | None = None, secret: str | None = None) -> str:
    return (f"image: {image}\n" + (f"cache: {cache}\n" if cache else "")
            + (f"secrets: [{secret}]\n" if secret else "") + "tasks:\n  - a: make\n")
