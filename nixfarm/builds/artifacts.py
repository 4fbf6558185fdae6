"""Artifacts: files a job keeps, uploaded by its runner into the object store.

An artifact is stored under ``jobs/<job>/artifacts/<row id>`` (its file name may hold
characters object keys may not) and served by name. Uploads stream; the name is the
file's base name, unique per job (the manifest checks that too).
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import AsyncIterable, AsyncIterator

import sqlalchemy as sa

from nixfarm.config import Settings
from nixfarm.db.engine import Database
from nixfarm.db.models import Artifact
from nixfarm.errors import Conflict, InvalidInput, NotFound
from nixfarm.storage.base import ObjectStore, ObjectStream
from nixfarm.wire.jobs import ArtifactOut

MAX_NAME = 255


def artifact_out(artifact: Artifact, base_url: str, query: str = "") -> ArtifactOut:
    """The API view of ``artifact``, served at ``base_url`` (``query``: its job's key)."""
    url = f"{base_url}/api/v1/jobs/{artifact.job_id}/artifacts/{artifact.name}{query}"
    return ArtifactOut(name=artifact.name, path=artifact.path, size=artifact.size, url=url,
                       created_at=artifact.created_at, sha256=artifact.sha256)


class ArtifactService:
    def __init__(self, db: Database, store: ObjectStore, settings: Settings) -> None:
        self.db = db
        self.store = store
        self.settings = settings

    def _out(self, artifact: Artifact) -> ArtifactOut:
        return artifact_out(artifact, self.settings.base_url)

    async def save(self, job_id: int, name: str, path: str,
                   body: AsyncIterable[bytes]) -> ArtifactOut:
        if (not name or len(name) > MAX_NAME or "/" in name or name in (".", "..")
                or not name.isprintable()):
            raise InvalidInput(f"artifact name {name!r} must be a file name", field="name")
        if posixpath.basename(path) != name:
            raise InvalidInput(f"artifact {name!r} must be named after its path {path!r}",
                               field="path")
        limits = self.settings.jobs
        async with self.db.session() as s:
            if await s.scalar(sa.select(Artifact.id).where(
                    Artifact.job_id == job_id, Artifact.name == name)) is not None:
                raise Conflict(f"job {job_id} already has an artifact {name!r}")
            # The runner enforces the quotas; the server holds them too, for any runner.
            count = await s.scalar(sa.select(sa.func.count(Artifact.id)).where(
                Artifact.job_id == job_id)) or 0
            if count >= limits.artifacts:
                raise InvalidInput(f"job {job_id} already has {count} artifacts; this farm "
                                   f"keeps at most {limits.artifacts} per job", field="name")
            artifact = Artifact(job_id=job_id, name=name, path=path, size=0, storage_key="")
            s.add(artifact)
            await s.flush()
            artifact.storage_key = f"jobs/{job_id}/artifacts/{artifact.id}"
        digest = hashlib.sha256()

        async def capped() -> AsyncIterator[bytes]:
            size = 0
            async for chunk in body:
                size += len(chunk)
                digest.update(chunk)
                if size > limits.artifact_bytes:
                    raise InvalidInput(f"artifact {name} is more than {limits.artifact_bytes} "
                                       "bytes, this farm's limit", field="size")
                yield chunk

        try:
            info = await self.store.put(artifact.storage_key, capped())
        except BaseException:
            async with self.db.session() as s:
                await s.execute(sa.delete(Artifact).where(Artifact.id == artifact.id))
            raise
        async with self.db.session() as s:
            await s.execute(sa.update(Artifact).where(Artifact.id == artifact.id)
                            .values(size=info.size, sha256=digest.hexdigest()))
        artifact.size, artifact.sha256 = info.size, digest.hexdigest()
        return self._out(artifact)

    async def open(self, job_id: int, name: str) -> tuple[ArtifactOut, ObjectStream]:
        """The artifact and its bytes (opened, so a missing object fails here)."""
        async with self.db.session() as s:
            artifact = await s.scalar(sa.select(Artifact).where(
                Artifact.job_id == job_id, Artifact.name == name))
        if artifact is None:
            raise NotFound(f"Job {job_id} has no artifact {name!r}.", kind="artifact", name=name)
        return self._out(artifact), await self.store.get(artifact.storage_key)
