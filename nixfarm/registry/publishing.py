"""Publishing the registry's answers, for a front server to give without the app.

When pulls need no token, a manifest by digest is the same for every client and never
changes, so it can be published as it is given. A manifest by tag can be published too
when its target cannot move (the source gave a cache key) and the image can be written
in Docker schema 2 (not zstd layers): the tag then names that manifest until the source
changes. Sources other than a path never change under a cache key; a path source's key
follows its content, so while tags are published ``Publication.watch`` re-hashes the
tree and withdraws them all when it changes.

Where and how answers are published is the publisher's business: the edge (nginx,
``edge/registry.py``) implements ``RegistryPublisher``. Publishing is best effort and
never raises: an unpublished answer only means the next pull comes to the app again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from nixfarm.oci.digest import Digest
from nixfarm.registry.sources import PATH_RECHECK_SECONDS, PackageSource

log = logging.getLogger(__name__)


class RegistryPublisher(Protocol):
    def manifest(self, body: bytes, media_type: str, digest: Digest) -> None:
        """Give ``body`` (of ``media_type``) for the manifest ``digest`` from now on.
        Content-addressed, so never withdrawn."""

    def tag(self, uri: str, docker_manifest: bytes, digest: Digest) -> None:
        """Give ``docker_manifest`` (Docker schema 2, whose digest is ``digest``) for
        ``uri``, a manifest by tag, from now on."""

    def withdraw_tags(self) -> None:
        """Stop giving every tag published so far, at once."""


class Publication:
    """The registry's side of publishing: what goes to the publisher, which source key
    the published tags were computed under, and withdrawing them when a path source's
    content moves on."""

    def __init__(self, publisher: RegistryPublisher) -> None:
        self.publisher = publisher
        #: The path source key the published tags were computed under.
        self._key: str | None = None

    def manifest(self, body: bytes, media_type: str, digest: Digest) -> None:
        self.publisher.manifest(body, media_type, digest)

    def tag(self, uri: str, docker_manifest: bytes, digest: Digest,
            path_key: str | None) -> None:
        """Publish a tag; ``path_key`` is a path source's current key (other sources'
        tags never move)."""
        if path_key is not None:
            if self._key is not None and self._key != path_key:
                self.publisher.withdraw_tags()
            self._key = path_key
        self.publisher.tag(uri, docker_manifest, digest)

    async def watch(self, source: PackageSource) -> None:
        """Withdraw published tags when a path source's content changes (runs forever)."""
        if source.kind != "path":
            return
        while True:
            await asyncio.sleep(PATH_RECHECK_SECONDS)
            if self._key is None:
                continue
            try:
                key = (await source.resolve("latest")).cache_key
            except Exception as e:
                log.warning("registry: could not check the package source: %s", e)
                key = None
            if key != self._key:
                log.info("registry: the package source changed; published tags withdrawn")
                self.publisher.withdraw_tags()
                self._key = None
