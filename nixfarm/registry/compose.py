"""Composing an image from a built closure: layers, the customisation layer, the config.

The closure's store paths are grouped into layers (grouping.py), each fetched from or
written into the layer cache; on top sits the customisation layer, which makes the
store paths a usable root filesystem:

- a symlink forest of the requested packages, as nixpkgs' ``buildEnv`` makes one:
  ``/bin/hello -> /nix/store/...-hello/bin/hello``. Where several packages have the
  same directory (``bin``, ``share/man``) it becomes a real directory merging them;
  where two packages have the same file, the first package (by name) wins. ``/bin``,
  ``/etc`` and ``/usr/bin`` are always real directories, so the files below can go in;
- ``/etc/passwd`` and ``/etc/group`` with root and nobody, ``/tmp`` (mode 1777), and
  ``/usr/bin/env`` pointing at the image's ``env`` when it has one (``#!/usr/bin/env``);
- the image config: ``PATH`` covering the forest, and ``Cmd`` set to a shell when the
  image has one (``bash`` before ``sh``), so ``podman run -it IMAGE`` gives a prompt.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio.to_thread

from nixfarm.oci.digest import Digest
from nixfarm.oci.manifest import (
    MANIFEST_MEDIA_TYPES,
    OCI_MANIFEST,
    Compression,
    LayerInfo,
    Platform,
    RuntimeConfig,
    image_config,
    image_manifest,
)
from nixfarm.registry.grouping import group_layers
from nixfarm.registry.layers import LayerCache
from nixfarm.registry.nixbuild import Closure

_FORCED_DIRS = {"bin", "etc", "usr", "usr/bin", "sbin"}
_SKIPPED_TOP = {"nix-support"}
_PASSWD = (b"root:x:0:0:System administrator:/root:/bin/sh\n"
           b"nobody:x:65534:65534:Unprivileged account:/var/empty:/bin/false\n")
_GROUP = b"root:x:0:\nnobody:x:65534:\n"
_SHELLS = ("bin/bash", "bin/sh")
PATH = "/bin:/sbin:/usr/bin"


@dataclass(frozen=True)
class Image:
    """A composed image: its layers (bottom first) and config blob."""

    layers: tuple[LayerInfo, ...]
    config: bytes
    # Rendered manifests by media type: a warm pull should not re-render (~50 us for
    # twenty layers, a quarter of the whole answer).
    _rendered: dict[str, bytes] = field(default_factory=dict, compare=False, repr=False)
    _digests: dict[str, Digest] = field(default_factory=dict, compare=False, repr=False)

    @property
    def compression(self) -> Compression:
        return self.layers[-1].compression

    def manifest(self, media_type: str) -> bytes:
        body = self._rendered.get(media_type)
        if body is None:
            body = self._rendered[media_type] = image_manifest(self.config, self.layers,
                                                               media_type)
        return body

    def digest(self, media_type: str) -> Digest:
        """The digest of :meth:`manifest` in ``media_type`` (hashed once per image)."""
        digest = self._digests.get(media_type)
        if digest is None:
            digest = self._digests[media_type] = Digest.of(self.manifest(media_type))
        return digest

    @property
    def media_types(self) -> tuple[str, ...]:
        return (OCI_MANIFEST,) if self.compression == "zstd" else MANIFEST_MEDIA_TYPES


def symlink_forest(roots: Sequence[str]) -> tuple[dict[str, str], set[str]]:
    """(image path -> link target, real directories) merging the trees at ``roots``."""
    links: dict[str, str] = {}
    dirs: set[str] = set()

    def merge(relative: str, sources: list[str]) -> None:
        entries: dict[str, list[str]] = {}
        for source in sources:
            try:
                names = sorted(os.listdir(source))
            except (NotADirectoryError, FileNotFoundError):
                continue
            for name in names:
                if relative or name not in _SKIPPED_TOP:
                    entries.setdefault(name, []).append(os.path.join(source, name))
        for name in sorted(entries):
            path = f"{relative}/{name}" if relative else name
            found = entries[name]
            directories = [p for p in found if os.path.isdir(p)]
            if len(directories) == len(found) and (len(found) > 1 or path in _FORCED_DIRS):
                dirs.add(path)
                merge(path, directories)
            else:
                links[path] = found[0]

    merge("", [root for root in roots if os.path.isdir(root)])
    return links, dirs


def customisation(roots: Sequence[str]) -> tuple[dict[str, str], dict[str, tuple[bytes, int]],
                                                 dict[str, int], RuntimeConfig]:
    """The customisation layer's symlinks, files and directories, and the runtime config."""
    links, forest_dirs = symlink_forest(roots)
    files = {"etc/passwd": (_PASSWD, 0o644), "etc/group": (_GROUP, 0o644)}
    dirs = dict.fromkeys(forest_dirs | {"etc", "usr/bin"}, 0o755)
    dirs["tmp"] = 0o1777
    for path in list(links):
        if path in files or path in dirs:
            del links[path]
    if "bin/env" in links and "usr/bin/env" not in links:
        links["usr/bin/env"] = links["bin/env"]
    shell = next((f"/{s}" for s in _SHELLS if s in links), None)
    runtime = RuntimeConfig(env=(f"PATH={PATH}",), cmd=(shell,) if shell else ())
    return links, files, dirs, runtime


async def compose(closure: Closure, cache: LayerCache, popularity: dict[str, int],
                  budget: int, platform: Platform) -> Image:
    """Group ``closure`` into layers, write the missing ones, and make the config."""
    roots = closure.roots
    # One layer of the budget is the customisation layer's.
    groups = group_layers(closure.graph, roots, closure.sizes, popularity,
                          budget=max(budget - 1, 1))
    path_layers = await asyncio.gather(*(cache.paths(group) for group in groups))
    links, files, dirs, runtime = await anyio.to_thread.run_sync(customisation, roots)
    top = await cache.customisation(links, files, dirs)
    layers = (*path_layers, top)
    return Image(layers=layers, config=image_config(layers, runtime, platform))
