"""Writing NARs (Nix ARchives) from a directory tree, and hashing them on the way.

A NAR is Nix's canonical serialisation of a file system object: the thing whose sha256
is a store path's ``narHash`` and whose length is its ``narSize``. Unlike tar it has
exactly one encoding per tree: no timestamps, owners or permissions other than the
executable bit, and directory entries sorted by the bytes of their names. The grammar,
where every token is a *string* (a little-endian u64 length, the bytes, then zero
padding to a multiple of 8)::

    nar       = "nix-archive-1" node
    node      = "(" "type" body ")"
    body      = "regular" ["executable" ""] "contents" <bytes>
              | "symlink" "target" <target>
              | "directory" { "entry" "(" "name" <name> "node" node ")" }

File contents are a string too, so a file is emitted as its length, then its bytes in
chunks straight from disk, then the padding: nothing ever holds a whole file. Small
tokens are coalesced so that consumers see chunks of about ``chunk_size`` bytes rather
than thousands of 8-byte writes.

Reading NARs back (validation and ``.ls`` listings) lives in :mod:`nixfarm.nix.narparse`
and is re-exported here.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from nixfarm.errors import InvalidInput
from nixfarm.nix.narparse import MAGIC, NarValidator, list_nar, render_listing

__all__ = ["NarHasher", "NarValidator", "dump", "hash_path", "list_nar", "render_listing"]

_ZEROS = bytes(8)


def _padding(length: int) -> bytes:
    return _ZEROS[: (-length) % 8]


def _string(data: bytes) -> bytes:
    return len(data).to_bytes(8, "little") + data + _padding(len(data))


def _tokens(*words: bytes) -> bytes:
    return b"".join(_string(word) for word in words)


def _node(path: bytes, chunk_size: int) -> Iterator[bytes]:
    info = os.lstat(path)
    if stat.S_ISREG(info.st_mode):
        # Nix looks at the owner's execute bit only.
        executable = info.st_mode & stat.S_IXUSR
        yield _tokens(b"(", b"type", b"regular")
        if executable:
            yield _tokens(b"executable", b"")
        yield _string(b"contents") + info.st_size.to_bytes(8, "little")
        remaining = info.st_size
        with open(path, "rb") as file:
            while remaining:
                block = file.read(min(chunk_size, remaining))
                if not block:
                    raise InvalidInput(
                        f"{os.fsdecode(path)} shrank while it was being archived.", "path"
                    )
                remaining -= len(block)
                yield block
        yield _padding(info.st_size) + _string(b")")
    elif stat.S_ISLNK(info.st_mode):
        yield _tokens(b"(", b"type", b"symlink", b"target", os.readlink(path), b")")
    elif stat.S_ISDIR(info.st_mode):
        yield _tokens(b"(", b"type", b"directory")
        for name in sorted(os.listdir(path)):
            yield _tokens(b"entry", b"(", b"name", name, b"node")
            yield from _node(os.path.join(path, name), chunk_size)
            yield _string(b")")
        yield _string(b")")
    else:
        raise InvalidInput(
            f"{os.fsdecode(path)} is neither a regular file, a symlink nor a directory.",
            "path",
        )


def _coalesce(pieces: Iterable[bytes], chunk_size: int) -> Iterator[bytes]:
    pending = bytearray()
    for piece in pieces:
        if len(piece) >= chunk_size:
            # A block of file data: pass it through without copying it again.
            if pending:
                yield bytes(pending)
                pending.clear()
            yield piece
            continue
        pending += piece
        if len(pending) >= chunk_size:
            yield bytes(pending)
            pending.clear()
    if pending:
        yield bytes(pending)


def dump(path: Path, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Serialise ``path`` (not following a symlink at the top) as a NAR, in chunks.

    The concatenated chunks equal ``nix-store --dump path`` byte for byte.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    return _coalesce(_archive(os.fsencode(path), chunk_size), chunk_size)


def _archive(path: bytes, chunk_size: int) -> Iterator[bytes]:
    yield _string(MAGIC)
    yield from _node(path, chunk_size)


class NarHasher:
    """Accumulates a NAR's sha256 and size as its chunks go past."""

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self._size = 0

    def update(self, chunk: bytes) -> None:
        self._sha256.update(chunk)
        self._size += len(chunk)

    def digest(self) -> bytes:
        return self._sha256.digest()

    @property
    def size(self) -> int:
        return self._size


def hash_path(path: Path) -> tuple[bytes, int]:
    """The NAR sha256 digest and NAR size of ``path``: its ``narHash`` and ``narSize``."""
    hasher = NarHasher()
    for chunk in dump(path):
        hasher.update(chunk)
    return hasher.digest(), hasher.size
