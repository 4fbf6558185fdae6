"""The images the registry has built, as its web page lists them.

Each image the manifest cache keeps has a record ``registry/images/<key>.json`` in the
object store (``registry/manifests``): its layers, its config, and since the web page
its name, the build that made it and when. The catalogue reads those records; an image
recorded before names were kept is listed by its key alone. Images of a moving source
(never cached) are not recorded, and appear only on the build board while it remembers
them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from nixfarm.errors import NotFound
from nixfarm.oci.digest import Digest
from nixfarm.oci.manifest import LayerInfo
from nixfarm.registry.compose import Image
from nixfarm.registry.layers import decode_layer
from nixfarm.registry.manifests import IMAGE_PREFIX
from nixfarm.storage.base import ObjectStore

#: The most records a listing reads (the newest are shown first).
MAX_LISTED = 500
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


async def built_images(store: ObjectStore) -> list[BuiltImage]:
    """The recorded images, the newest first (at most ``MAX_LISTED`` read)."""
    found = []
    async for info in store.list(IMAGE_PREFIX):
        key = info.key.removeprefix(IMAGE_PREFIX).removesuffix(".json")
        if _KEY.fullmatch(key):
            found.append(_parse(key, await store.read(info.key)))
        if len(found) >= MAX_LISTED:
            break
    epoch = datetime.fromtimestamp(0, UTC)
    return sorted(found, key=lambda i: (i.built_at or epoch, i.key), reverse=True)


async def built_image(store: ObjectStore, key: str) -> BuiltImage:
    if not _KEY.fullmatch(key):
        raise NotFound(f"{key!r} is not an image key", kind="image", name=key)
    try:
        return _parse(key, await store.read(IMAGE_PREFIX + key + ".json"))
    except NotFound:
        raise NotFound(f"The registry has no built image {key}.", kind="image",
                       name=key) from None
