"""What public binary caches publish for nginx (see the package docstring).

A cache's answers go under ``cache/<name>/`` of the published tree, where nginx's
cache locations look first: ``nix-cache-info``, ``<hash>.narinfo`` and, as hard links
to the stored files, ``nar/<filehash>.nar[.ext]``. Implements
``nixfarm.cache.publishing.CachePublisher``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from nixfarm.edge.tree import EdgeTree


class CacheEdge:
    def __init__(self, tree: EdgeTree) -> None:
        self.tree = tree

    def cache_info(self, cache: str, text: bytes) -> None:
        self.tree.publish(f"cache/{cache}/nix-cache-info", text)

    def narinfo(self, cache: str, store_hash: str, body: bytes) -> None:
        self.tree.publish(f"cache/{cache}/{store_hash}.narinfo", body)

    def nar_file(self, cache: str, filename: str, stored: Path) -> None:
        self.tree.link(f"cache/{cache}/nar/{filename}", stored)

    def withdraw(self, cache: str, store_hashes: Sequence[str],
                 nar_files: Sequence[str]) -> None:
        for store_hash in store_hashes:
            self.tree.remove(f"cache/{cache}/{store_hash}.narinfo")
        if not nar_files:
            return
        # A NAR file may have been linked under every public cache it was in.
        published = self.tree.path("cache")
        names = [d.name for d in published.iterdir()
                 if d.is_dir() and not d.name.startswith(".")] if published.is_dir() else []
        for name in names:
            for file in nar_files:
                self.tree.remove(f"cache/{name}/nar/{file}")
