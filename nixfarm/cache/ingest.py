"""One pass over an uploaded NAR file: store it, hash it, and hash what it unpacks to.

    request body ──► sha256 + size of the file (FileHash, FileSize)
         │      └──► object writer (a temp object until commit)
         └─► decompressor ──► sha256 + size of the NAR (NarHash, NarSize)
                          └─► NAR parser: is it a well-formed NAR? its .ls listing

Nothing is kept whole in memory: chunks are batched to about a megabyte and the
CPU work (hashing, decompressing) runs in a worker thread so the event loop keeps
serving other requests. The caller decides, from the facts, whether to commit.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import anyio.to_thread

from nixfarm.nix.compression import decompressor
from nixfarm.nix.hashes import format_hash
from nixfarm.nix.narparse import NarValidator, render_listing
from nixfarm.storage.base import ObjectWriter

_BATCH = 1 << 20


@dataclass(frozen=True)
class NarFacts:
    """What a stored NAR file is, as computed while receiving it."""

    compression: str
    file_hash: str
    file_size: int
    nar_hash: str
    nar_size: int
    #: Nix's ``.ls`` listing of the NAR (JSON text).
    listing: str


class NarIngest:
    def __init__(self, writer: ObjectWriter, compression: str) -> None:
        self._writer = writer
        self._compression = compression
        self._file = hashlib.sha256()
        self._file_size = 0
        self._nar = hashlib.sha256()
        self._nar_size = 0
        self._validator = NarValidator()
        self._decompressor = decompressor(compression, self._on_nar)
        self._pending: list[bytes] = []
        self._pending_size = 0

    def _on_nar(self, data: bytes) -> None:
        self._nar.update(data)
        self._nar_size += len(data)
        self._validator.feed(data)

    def _digest(self, data: bytes) -> None:
        self._file.update(data)
        self._file_size += len(data)
        self._decompressor.feed(data)

    async def _drain(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        await anyio.to_thread.run_sync(self._digest, data)
        await self._writer.write(data)

    async def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        self._pending.append(chunk)
        self._pending_size += len(chunk)
        if self._pending_size >= _BATCH:
            await self._drain()

    async def finish(self) -> NarFacts:
        """Flush and return the facts; raises InvalidInput if the stream is corrupt."""
        await self._drain()
        self._decompressor.finish()
        self._validator.finish()
        return NarFacts(
            compression=self._compression,
            file_hash=format_hash(self._file.digest()),
            file_size=self._file_size,
            nar_hash=format_hash(self._nar.digest()),
            nar_size=self._nar_size,
            listing=render_listing(self._validator.listing),
        )
