"""The services of the builds face, built together (``Farm.open`` calls ``open``).

``background()`` is the work a serving process does on its own while it runs: the
lease-expiry and time-limit pass, scheduled jobs (``schedules``), and trigger
deliveries (which outlive the request
that ended the job).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio

from nixfarm.builds.artifacts import ArtifactService
from nixfarm.builds.jobs import JobService
from nixfarm.builds.logs import LogService
from nixfarm.builds.runners import RunnerService
from nixfarm.builds.schedules import ScheduleService
from nixfarm.builds.secrets import SecretService
from nixfarm.builds.shells import ShellService
from nixfarm.builds.triggers import TriggerService
from nixfarm.cache.service import CacheService
from nixfarm.config import Settings
from nixfarm.db.engine import Database
from nixfarm.events.base import EventBus
from nixfarm.storage.base import ObjectStore
from nixfarm.tokens import TokenService


@dataclass
class BuildServices:
    secrets: SecretService
    logs: LogService
    triggers: TriggerService
    artifacts: ArtifactService
    jobs: JobService
    runners: RunnerService
    schedules: ScheduleService
    shells: ShellService

    @classmethod
    def open(cls, settings: Settings, db: Database, store: ObjectStore, bus: EventBus,
             caches: CacheService, tokens: TokenService, secrets_key: bytes) -> BuildServices:
        secrets = SecretService(db, secrets_key)
        logs = LogService(store, bus)
        triggers = TriggerService(db, settings.jobs, secrets.webhook_key)
        artifacts = ArtifactService(db, store, settings)
        jobs = JobService(db, settings, bus, logs, secrets, triggers, caches)
        runners = RunnerService(jobs, tokens, artifacts)
        return cls(secrets, logs, triggers, artifacts, jobs, runners,
                   ScheduleService(jobs, tokens), runners.shells)

    @asynccontextmanager
    async def background(self) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tasks:
            self.jobs.attach(tasks)
            tasks.start_soon(self.runners.reap_forever)
            tasks.start_soon(self.schedules.run_forever)
            try:
                yield
            finally:
                self.jobs.attach(None)
                tasks.cancel_scope.cancel()
