"""Publishing a public cache's answers, for a front server to give without the app.

A public cache's ``nix-cache-info``, narinfos and NAR files are the same for every
client, and change only when a path is uploaded again or collected. So the cache
service hands each such answer, as it gives it, to a ``CachePublisher``, and
withdraws what a re-upload or a collection changed. Where and how answers are
published is the publisher's business: the edge (nginx, ``edge/cache.py``) implements
this Protocol; without a front server there is none.

Publishing is best effort: the app has already answered, and an answer that was not
published only means the next request comes to the app again. So no method raises;
a publisher logs its own failures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol


class CachePublisher(Protocol):
    def cache_info(self, cache: str, text: bytes) -> None:
        """Give ``text`` as the cache's ``nix-cache-info`` from now on."""

    def narinfo(self, cache: str, store_hash: str, body: bytes) -> None:
        """Give ``body`` as ``<store_hash>.narinfo`` of the cache from now on."""

    def nar_file(self, cache: str, filename: str, stored: Path) -> None:
        """Give the stored file ``stored`` as ``nar/<filename>`` of the cache from now on
        (without copying it where the publisher can)."""

    def withdraw(self, cache: str, store_hashes: Sequence[str],
                 nar_files: Sequence[str]) -> None:
        """Stop giving the narinfos of ``store_hashes`` of ``cache``, and the NAR files
        ``nar_files`` (``<filehash>.nar[.ext]``) of every cache: a NAR file is shared by
        the caches it was uploaded to. Idempotent."""
