"""The images the registry has built, as its web page lists them.

Each image the manifest cache keeps has a record ``registry/images/<key>.json`` in the
object store (``registry/manifests``): its layers, its config, and since the web page
its name, the build that made it and when. The catalogue reads those records, a page at a time
in the order of their ``registry/built/`` names (newest first); an image recorded
before names were kept is listed by its key alone, and one recorded before the
``built/`` names were is given its name at the first listing. Images of a moving source
(never cached) are not recorded, and appear only on the build board while it remembers
them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from nixfarm.errors import InvalidInput, NotFound
from nixfarm.oci.digest import Digest
from nixfarm.oci.manifest import LayerInfo
from nixfarm.registry.compose import Image
from nixfarm.registry.layers import decode_layer
from nixfarm.registry.manifests import BUILT_PREFIX, IMAGE_PREFIX, built_key
from nixfarm.storage.base import ObjectStore

#: How many images a page of the listing shows (and reads the records of).
PER_PAGE = 50
_KEY = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class BuiltImage:
    key: str
    name: str
    build_id: str
    built_at: datetime | None
    layers: tuple[LayerInfo, ...]
    config: bytes

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers)

    def digests(self) -> list[tuple[str, Digest]]:
        """(media type, digest) of each manifest flavour a pull may get (Docker's, OCI's)."""
        image = Image(layers=self.layers, config=self.config)
        return [(media_type, image.digest(media_type)) for media_type in image.media_types]

    def config_facts(self) -> dict[str, object]:
        """What the config says that people look for: platform, environment, command."""
        doc = json.loads(self.config)
        config = doc.get("config") or {}
        return {"platform": f"{doc.get('os', '?')}/{doc.get('architecture', '?')}",
                "env": list(config.get("Env") or []), "cmd": list(config.get("Cmd") or [])}


def _parse(key: str, data: bytes) -> BuiltImage:
    record = json.loads(data)
    built = record.get("built_at")
    return BuiltImage(key=key, name=str(record.get("name") or ""),
                      build_id=str(record.get("build") or ""),
                      built_at=datetime.fromtimestamp(built, UTC) if isinstance(built, int)
                      else None,
                      layers=tuple(decode_layer(layer) for layer in record["layers"]),
                      config=str(record["config"]).encode("ascii"))


async def built_images(store: ObjectStore, page: int = 1, per_page: int = PER_PAGE
                       ) -> tuple[list[BuiltImage], bool]:
    """One page (from 1) of the recorded images, the newest first, and whether more
    follow. Lists names only; reads the records of the page's images."""
    if page < 1:
        raise InvalidInput("page must be 1 or more", field="page")
    ordered = await _ordered(store)
    keys = ordered[(page - 1) * per_page:page * per_page + 1]
    found = []
    for key in keys[:per_page]:
        try:
            found.append(await built_image(store, key))
        except NotFound:  # removed since the listing
            continue
    return found, len(keys) > per_page


async def _ordered(store: ObjectStore) -> list[str]:
    """The keys of the recorded images, the newest first."""
    ordered: dict[str, None] = {}
    async for info in store.list(BUILT_PREFIX):
        key = info.key.rsplit(".", 1)[1]
        if _KEY.fullmatch(key):
            ordered.setdefault(key)  # a key recorded again: its newest name comes first
    unordered = []
    async for info in store.list(IMAGE_PREFIX):
        key = info.key.removeprefix(IMAGE_PREFIX).removesuffix(".json")
        if _KEY.fullmatch(key) and key not in ordered:
            unordered.append(key)
    if not unordered:
        return list(ordered)
    # Records from before the ``built/`` names: named once, then listed like the others.
    for key in unordered:
        image = await built_image(store, key)
        built_at = round(image.built_at.timestamp()) if image.built_at else None
        await store.put(built_key(key, built_at), b"")
    return await _ordered(store)


async def built_image(store: ObjectStore, key: str) -> BuiltImage:
    if not _KEY.fullmatch(key):
        raise NotFound(f"{key!r} is not an image key", kind="image", name=key)
    try:
        return _parse(key, await store.read(IMAGE_PREFIX + key + ".json"))
    except NotFound:
        raise NotFound(f"The registry has no built image {key}.", kind="image",
                       name=key) from None
