"""Small builders for database tests: well-formed hashes and store paths, caches and NARs."""

from __future__ import annotations

import hashlib

from nixfarm.db import caches, paths
from nixfarm.db.engine import Database
from nixfarm.db.models import Cache, Nar

NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"


def _nix32(seed: str, length: int) -> str:
    digest = hashlib.sha256(seed.encode()).digest()
    return "".join(NIX32[b % 32] for b in (digest * 2)[:length])


def file_hash(seed: str) -> str:
    return "sha256:" + _nix32("file" + seed, 52)


def nar_hash(seed: str) -> str:
    return "sha256:" + _nix32("nar" + seed, 52)


def store_hash(seed: str) -> str:
    return _nix32("path" + seed, 32)


def store_path(seed: str, name: str = "pkg-1.0") -> str:
    return f"/nix/store/{store_hash(seed)}-{name}"


async def new_cache(db: Database, name: str = "main") -> Cache:
    async with db.session() as session:
        return await caches.create_cache(session, name, False, "k:s", "k:p")


async def new_nar(db: Database, seed: str, cache: Cache | None = None) -> Nar:
    async with db.session() as session:
        nar = await paths.add_nar(
            session,
            file_hash=file_hash(seed),
            file_size=100 + len(seed),
            compression="zstd",
            nar_hash=nar_hash(seed),
            nar_size=1000 + len(seed),
            storage_key=f"nar/{seed}",
        )
        if cache is not None:
            await paths.link_nar_to_cache(session, cache.id, nar.id)
        return nar
