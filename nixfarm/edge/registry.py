"""What the registry publishes for nginx: manifests by digest, and stable tags.

Manifests go under ``registry/manifests/<hex>.docker|oci`` of the published tree; tags
into nginx's tag map, which nginx answers for clients whose first Accept header names
Docker schema 2 (see nginx.py). Which tags may be published, and when they must be
withdrawn, is the registry's decision (``registry/publishing.py``); this module only
keeps nginx's reloads for new tags down to one a second. Implements
``nixfarm.registry.publishing.RegistryPublisher``.
"""

from __future__ import annotations

import asyncio
import time

from nixfarm.edge.tree import EdgeTree
from nixfarm.oci.digest import Digest
from nixfarm.oci.manifest import DOCKER_MANIFEST, OCI_MANIFEST

_EXTENSIONS = {DOCKER_MANIFEST: "docker", OCI_MANIFEST: "oci"}

#: nginx reloads (new workers; old ones linger while their connections stay open) at
#: most this often for new tags; withdrawals reload at once.
RELOAD_SECONDS = 1.0


class RegistryEdge:
    def __init__(self, tree: EdgeTree) -> None:
        self.tree = tree
        #: Tags this process published, so a client nginx cannot answer (an OCI-only
        #: Accept) does not make every request re-read the map.
        self._tags: dict[str, str] = {}
        #: Manifests (hex digests) published by this process: content-addressed, they
        #: are never withdrawn, so a request need not look at the tree again.
        self._manifests: set[str] = set()
        self._last_reload = 0.0
        self._reload_due: asyncio.TimerHandle | None = None

    def manifest(self, body: bytes, media_type: str, digest: Digest) -> None:
        """Publish a manifest (whose digest the caller knows) under its digest."""
        extension = _EXTENSIONS.get(media_type)
        if extension is None or digest.hex in self._manifests:
            return
        relative = f"registry/manifests/{digest.hex}.{extension}"
        if not self.tree.has(relative):
            self.tree.publish(relative, body)
        self._manifests.add(digest.hex)

    def tag(self, uri: str, docker_manifest: bytes, digest: Digest) -> None:
        """Let nginx answer ``uri`` (a manifest by tag) with ``docker_manifest``."""
        self.manifest(docker_manifest, DOCKER_MANIFEST, digest)
        if self._tags.get(uri) == digest.hex:
            return
        if self.tree.add_tag(uri, digest.hex):
            self._reload_soon()
        self._tags[uri] = digest.hex

    def withdraw_tags(self) -> None:
        self._tags.clear()
        self.tree.clear_tags()  # reloads nginx at once
        self._last_reload = time.monotonic()

    def _reload_soon(self) -> None:
        """Reload nginx now, or once RELOAD_SECONDS have passed since the last reload
        (a burst of new images costs one reload, not one each)."""
        if self._reload_due is not None:
            return
        wait = self._last_reload + RELOAD_SECONDS - time.monotonic()
        if wait <= 0:
            self._reload()
            return
        self._reload_due = asyncio.get_running_loop().call_later(wait, self._reload)

    def _reload(self) -> None:
        self._reload_due = None
        self._last_reload = time.monotonic()
        self.tree.reload()
