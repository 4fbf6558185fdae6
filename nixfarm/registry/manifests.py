"""The manifest cache: composed images by cache key, in memory and then in storage.

Nixery's two tiers: a request first looks in this process's memory, then in the object
store (where another server, or this one before a restart, may have put it), and only
then builds. Keys come from :meth:`RegistryService.cache_key`: the source's cache key
(absent for moving targets, which are never cached), the packages, the system and
everything else that changes the layers.

What is stored per image is the config blob (under ``registry/blobs``), a small record
``registry/images/<key>.json`` (the config bytes and the layers), and both manifest
flavours under ``registry/manifests/sha256/<hex>``, so a pull by digest finds its
manifest whether or not the image is still in any cache and whatever its tag was.

Each record also gets an empty object ``registry/built/<order>.<key>`` whose name sorts
the newest build first (``order`` counts down with the build time), so the registry's
page lists one page of images by reading that page's records only
(``registry/catalogue``).
"""

from __future__ import annotations

import json
import time

from cachetools import LRUCache

from nixfarm.errors import InvalidInput, NotFound
from nixfarm.oci.digest import Digest
from nixfarm.oci.manifest import canonical_json
from nixfarm.registry.compose import Image
from nixfarm.registry.layers import blob_key, decode_layer, encode_layer
from nixfarm.storage.base import ObjectStore

MANIFEST_PREFIX = "registry/manifests/sha256/"
IMAGE_PREFIX = "registry/images/"
BUILT_PREFIX = "registry/built/"
MEMORY_ENTRIES = 1024
#: Build times (Unix seconds) count down from here in ``built_key``s.
_LAST_SECOND = 10**11 - 1


def manifest_key(digest: Digest) -> str:
    return MANIFEST_PREFIX + digest.hex


def built_key(key: str, built_at: int | None) -> str:
    """The name that orders the record of ``key`` among the built images, the newest
    first (a record without a time, from before times were kept, last)."""
    return f"{BUILT_PREFIX}{_LAST_SECOND - (built_at or 0):011d}.{key}"


class ManifestCache:
    def __init__(self, store: ObjectStore, memory_entries: int = MEMORY_ENTRIES) -> None:
        self.store = store
        # Keys are content addresses: an entry never goes stale, so no time bound.
        self._memory: LRUCache[str, Image] = LRUCache(maxsize=memory_entries)

    async def get(self, key: str) -> Image | None:
        """The image cached under ``key``, from memory or storage; None if neither has it."""
        image = self._memory.get(key)
        if image is not None:
            return image
        try:
            record = json.loads(await self.store.read(IMAGE_PREFIX + key + ".json"))
        except NotFound:
            return None
        image = Image(layers=tuple(decode_layer(layer) for layer in record["layers"]),
                      config=record["config"].encode("ascii"))
        self._memory[key] = image
        return image

    async def put(self, key: str | None, image: Image, name: str = "",
                  build_id: str = "") -> None:
        """Store ``image``'s config and manifests; cache it under ``key`` unless None.

        ``name`` (the image as pulled, ``shell/git:latest``) and ``build_id`` (its build on the
        board) go into the record for the registry's web page (``registry/catalogue``)."""
        await self.store.put(blob_key(Digest.of(image.config)), image.config)
        for media_type in image.media_types:
            manifest = image.manifest(media_type)
            await self.store.put(manifest_key(image.digest(media_type)), manifest)
        if key is not None:
            built_at = round(time.time())
            record = canonical_json({"config": image.config.decode("ascii"),
                                     "layers": [encode_layer(layer) for layer in image.layers],
                                     "name": name, "build": build_id, "built_at": built_at})
            await self.store.put(IMAGE_PREFIX + key + ".json", record)
            await self.store.put(built_key(key, built_at), b"")
            self._memory[key] = image

    async def by_digest(self, digest: Digest) -> bytes:
        """The manifest with ``digest``; NotFound(kind="manifest") if none was ever served."""
        try:
            manifest = await self.store.read(manifest_key(digest))
        except NotFound:
            raise NotFound(f"No manifest has digest {digest}.", kind="manifest",
                           name=str(digest)) from None
        try:
            digest.verify(manifest)
        except InvalidInput:
            raise NotFound(f"The stored manifest {digest} is damaged.", kind="manifest",
                           name=str(digest)) from None
        return manifest
