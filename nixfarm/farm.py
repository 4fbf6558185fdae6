"""The farm's services, built once at start-up from the settings.

This is the one factory DESIGN.md speaks of: which database, object store and event
bus a process uses is decided here, from configuration, and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import anyio.to_thread

from nixfarm import farmkeys
from nixfarm.builders.autoscaler import Autoscaler
from nixfarm.builders.providers import open_providers
from nixfarm.builders.service import BuilderService
from nixfarm.builds.services import BuildServices
from nixfarm.cache import gc
from nixfarm.cache.browsing import CacheBrowser
from nixfarm.cache.service import CacheService
from nixfarm.config import Settings
from nixfarm.db import engine
from nixfarm.db.engine import Database
from nixfarm.edge.cache import CacheEdge
from nixfarm.edge.layout import EdgeLayout
from nixfarm.edge.registry import RegistryEdge
from nixfarm.edge.tree import EdgeTree
from nixfarm.events.base import EventBus
from nixfarm.events.factory import open_bus
from nixfarm.registry.pulltokens import PullTokens
from nixfarm.registry.service import RegistryService
from nixfarm.sessions import SessionService
from nixfarm.storage.base import ObjectStore
from nixfarm.storage.factory import open_store
from nixfarm.tokens import TokenService

log = logging.getLogger("nixfarm.farm")


@dataclass
class Farm:
    settings: Settings
    db: Database
    store: ObjectStore
    #: The tree published for nginx when it is in front of the app, else None.
    edge: EdgeTree | None
    caches: CacheService
    tokens: TokenService
    #: The web UI's sign-in sessions.
    sessions: SessionService
    #: Registry pull tokens, minted by ``/registry/token``.
    pull_tokens: PullTokens
    registry: RegistryService
    events: EventBus
    builds: BuildServices
    #: Ephemeral builders: their records, enrollment, and the providers of their pools.
    builders: BuilderService

    @classmethod
    async def open(cls, settings: Settings, *, workers: int = 0) -> Farm:
        """``workers``: the server's processes, where known (``events.factory``)."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        await anyio.to_thread.run_sync(engine.migrate, settings.db_url)
        db = await engine.connect(settings.db_url)
        try:
            store = open_store(settings)
            # Behind nginx (``nixfarm up`` resolved edge.server), answers are published.
            edge = EdgeTree(EdgeLayout.of(settings)) if settings.edge.server == "nginx" else None
            registry = RegistryService(  # ConfigError if the source is bad
                settings, store, RegistryEdge(edge) if edge is not None else None)
            caches = CacheService(db, store, settings,
                                  CacheEdge(edge) if edge is not None else None)
            tokens = TokenService(db)
            keys = await farmkeys.load(settings, db)  # ConfigError if not the farm's
            pull_tokens = PullTokens(keys.registry_token, tokens)
            events = open_bus(settings, workers=workers)
            caches.events = events  # re-uploads tell the other servers
            builds = BuildServices.open(settings, db, store, events, caches, tokens,
                                        keys.secrets)
            builders = BuilderService(db, settings, tokens, open_providers(settings))
        except BaseException:
            # Whatever failed to open, the database connection does not outlive it.
            await db.close()
            raise
        return cls(
            settings=settings,
            db=db,
            store=store,
            edge=edge,
            caches=caches,
            tokens=tokens,
            sessions=SessionService(db, tokens,
                                    timedelta(hours=settings.web.session_hours)),
            pull_tokens=pull_tokens,
            registry=registry,
            events=events,
            builds=builds,
            builders=builders,
        )

    @contextlib.asynccontextmanager
    async def background(self) -> AsyncIterator[None]:
        """Work a serving process does on its own (lease expiry, trigger deliveries,
        watching a path source while the edge answers its tags, and forgetting what
        another server's cache garbage collection removed)."""
        async with self.builds.background():
            watch = asyncio.create_task(self.registry.watch_source())
            collected = asyncio.create_task(gc.follow(self.caches, self.events))
            retention = asyncio.create_task(CacheBrowser(self.caches).retain_forever())
            scaler = scaling = None
            if self.settings.builders.autoscale and self.settings.builders.pools:
                scaler = Autoscaler(self.builders, self.builds.jobs)
                scaling = asyncio.create_task(scaler.run_forever())
            try:
                yield
            finally:
                retention.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await retention
                if scaler is not None and scaling is not None:
                    scaling.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await scaling
                    await self._stop_scaling(scaler)
                collected.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await collected
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch

    async def _stop_scaling(self, scaler: Autoscaler) -> None:
        """The autoscaling server stops: its idle builders go now, since nobody enforces
        their timeouts while no server scales (docs/builders.md, "When the server
        stops"), and the lease is given up for another server to take."""
        try:
            if await scaler.lead():
                await self.builders.shutdown()
                await scaler.resign()
        except Exception:
            log.exception("stopping the builder autoscaler failed")

    async def close(self) -> None:
        await self.builders.close()
        await self.events.close()
        await self.db.close()
