"""Small builders for database tests: well-formed hashes and store paths."""

from __future__ import annotations

import hashlib

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
