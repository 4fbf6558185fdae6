"""The registry page's catalogue on a real filesystem store: pages of built images, the
newest first, each page reading only its own images' records."""

from __future__ import annotations

from pathlib import Path

import pytest

from nixfarm.errors import InvalidInput
from nixfarm.oci.digest import Digest
from nixfarm.oci.manifest import LayerInfo, canonical_json
from nixfarm.registry import catalogue
from nixfarm.registry.compose import Image
from nixfarm.registry.layers import encode_layer
from nixfarm.registry.manifests import IMAGE_PREFIX, ManifestCache
from tests.fixtures.counting import CountingStore

pytestmark = pytest.mark.anyio


def _image(n: int) -> Image:
    layer = LayerInfo(Digest.of(f"layer {n}".encode()), 100 + n,
                      Digest.of(f"tar {n}".encode()), "gzip")
    return Image(layers=(layer,), config=canonical_json({"n": n}))


def _key(n: int) -> str:
    return Digest.of(f"image {n}".encode()).hex


async def test_pages_read_their_records_only(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "store")
    manifests = ManifestCache(store)
    # Records from before the catalogue's order was kept (times 100, 300, 200) ...
    for n, built_at in ((0, 100), (1, 300), (2, 200)):
        record = canonical_json({"config": _image(n).config.decode("ascii"),
                                 "layers": [encode_layer(la) for la in _image(n).layers],
                                 "name": f"old/{n}:latest", "build": "", "built_at": built_at})
        await store.put(f"{IMAGE_PREFIX}{_key(n)}.json", record)
    # ... and 120 built now: newer than those.
    for n in range(3, 123):
        await manifests.put(_key(n), _image(n), name=f"new/{n}:latest")

    first, more = await catalogue.built_images(store)  # orders the old records once
    assert more and len(first) == catalogue.PER_PAGE
    pages = [first]
    store.bytes_read = 0
    page = 2
    while more:
        images, more = await catalogue.built_images(store, page)
        pages.append(images)
        page += 1
    record_size = len(await store.read(f"{IMAGE_PREFIX}{_key(50)}.json"))
    # Pages 2 and 3 read their 73 records (about one record's size each), no others.
    assert store.bytes_read <= 73 * (record_size + 8), store.bytes_read

    listed = [i for p in pages for i in p]
    assert [len(p) for p in pages] == [50, 50, 23]
    assert len({i.key for i in listed}) == 123
    assert {i.name for i in listed[:120]} == {f"new/{n}:latest" for n in range(3, 123)}
    assert [i.name for i in listed[120:]] == ["old/1:latest", "old/2:latest", "old/0:latest"]
    times = [i.built_at for i in listed]
    assert times == sorted(times, reverse=True)  # type: ignore[type-var]

    # An image built again is listed once, with its new record (among the newest).
    await manifests.put(_key(1), _image(1), name="old/1:again")
    relisted = [i for p in (1, 2, 3) for i in (await catalogue.built_images(store, p))[0]]
    assert len(relisted) == 123
    again = [i for i in relisted if i.key == _key(1)]
    assert [i.name for i in again] == ["old/1:again"]
    newest = max(i.built_at for i in listed if i.built_at)
    assert again[0].built_at is not None and again[0].built_at >= newest  # a second on, maybe

    assert (await catalogue.built_images(store, 4)) == ([], False)
    with pytest.raises(InvalidInput, match="page"):
        await catalogue.built_images(store, 0)
