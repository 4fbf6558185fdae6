"""The layer cache: every layer is written once per object store, ever.

A layer of store paths is named by the hash of its sorted paths (``Layer.hash()``):
store paths are immutable, so the same set always makes the same tarball, and a layer
that another image already needed is found instead of rebuilt. Lookups go

    memory ──miss──> registry/layers/<compression>/<key>.json ──miss──> write the layer

The JSON record holds the layer's compressed digest and size and its diff_id; the
bytes live under ``registry/blobs/sha256/<hex>``, which is also where the blob
endpoint finds them. The record is written after the blob, so a record always names a
blob that exists. A per-key single flight makes concurrent requests for one layer
write it once; a limiter keeps at most two layers compressing at a time (one per core
on the machines nixfarm targets), so a big image cannot starve the server.

The customisation layer (symlink forest, /etc/passwd, ...) goes through the same cache
under a hash of its contents.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping

import anyio

from nixfarm.errors import NotFound
from nixfarm.oci.digest import Digest
from nixfarm.oci.layer import AsyncSink, write_customisation_layer_async, write_layer_async
from nixfarm.oci.manifest import Compression, LayerInfo, canonical_json
from nixfarm.registry.flight import SingleFlight
from nixfarm.registry.grouping import Layer
from nixfarm.storage.base import ObjectStore

BLOB_PREFIX = "registry/blobs/sha256/"


def blob_key(digest: Digest) -> str:
    return BLOB_PREFIX + digest.hex


def _encode(info: LayerInfo) -> bytes:
    return canonical_json(encode_layer(info))


def decode_layer(data: bytes | Mapping[str, object]) -> LayerInfo:
    doc = json.loads(data) if isinstance(data, bytes) else data
    compression: Compression = "zstd" if doc["compression"] == "zstd" else "gzip"
    return LayerInfo(digest=Digest.parse(str(doc["digest"])), size=int(str(doc["size"])),
                     diff_id=Digest.parse(str(doc["diff_id"])), compression=compression)


def encode_layer(info: LayerInfo) -> dict[str, object]:
    return {"digest": str(info.digest), "size": info.size, "diff_id": str(info.diff_id),
            "compression": info.compression}


class LayerCache:
    """Layers by content key, written once; ``written`` counts layers this process wrote."""

    def __init__(self, store: ObjectStore, compression: Compression) -> None:
        self.store = store
        self.compression: Compression = compression
        self.written = 0
        self._memory: dict[str, LayerInfo] = {}
        self._flight: SingleFlight[LayerInfo] = SingleFlight()
        self._limiter = anyio.CapacityLimiter(2)

    def _record_key(self, key: str) -> str:
        return f"registry/layers/{self.compression}/{key}.json"

    async def paths(self, layer: Layer) -> LayerInfo:
        """The layer holding ``layer.paths``, written now if no store has it yet."""
        write = functools.partial(write_layer_async, list(layer.paths),
                                  compression=self.compression)
        return await self._get(layer.hash(), write)

    async def customisation(self, symlinks: Mapping[str, str],
                            files: Mapping[str, tuple[bytes, int]],
                            dirs: Mapping[str, int]) -> LayerInfo:
        """The top layer of an image, keyed by a hash of everything in it."""
        description = canonical_json({
            "symlinks": dict(symlinks), "dirs": dict(dirs),
            "files": {p: [hashlib.sha256(d).hexdigest(), m] for p, (d, m) in files.items()}})
        key = "custom-" + hashlib.sha256(description).hexdigest()
        write = functools.partial(write_customisation_layer_async, symlinks, files, dirs,
                                  compression=self.compression)
        return await self._get(key, write)

    async def _get(self, key: str, write: Callable[[AsyncSink], Awaitable[LayerInfo]]
                   ) -> LayerInfo:
        known = self._memory.get(key)
        if known is not None:
            return known
        return await self._flight.run(key, lambda: self._load_or_write(key, write))

    async def _load_or_write(self, key: str, write: Callable[[AsyncSink], Awaitable[LayerInfo]]
                             ) -> LayerInfo:
        record = self._record_key(key)
        try:
            info = decode_layer(await self.store.read(record))
            if await self.store.stat(blob_key(info.digest)) is not None:
                self._memory[key] = info
                return info
        except NotFound:
            pass
        async with self._limiter, self.store.writer() as writer:
            info = await write(writer.write)
            await writer.commit(blob_key(info.digest))
        await self.store.put(record, _encode(info))
        self.written += 1
        self._memory[key] = info
        return info
