"""The object store contract: keys, object metadata, writers, and byte streams.

Everything nixfarm keeps outside its database (NARs, narinfos, build logs, OCI layers
and manifests, artifacts) lives in one flat namespace of *keys* in an object store. There
are two implementations, chosen once at start-up by ``nixfarm.storage.factory``:

- ``FilesystemStore`` (embedded mode): a directory; can hand out file paths so the
  HTTP layer sends files with ``sendfile``/pathsend.
- ``S3Store`` (scale-out mode): any S3-compatible bucket; can hand out presigned URLs so
  the HTTP layer redirects downloads to the bucket.

Guarantees every implementation gives (``tests/storage/test_conformance.py`` checks them):

- Writes stream: a writer never holds a whole object in memory.
- Writes are atomic: ``commit`` publishes a complete object under its key, replacing any
  previous one; a reader sees the old object or the whole new one, never a mix or a
  prefix. A writer that is aborted, or a ``put`` whose source raises, leaves nothing
  visible: no object, no listed temporary.
- Keys are validated here, once, the same way for every store (``check_key``), so a key
  that works on the filesystem works on S3 and the other way round.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator, Generator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

from nixfarm.errors import InvalidInput

#: Chunk size of ``get`` streams unless a store is told otherwise.
DEFAULT_CHUNK_SIZE = 1024 * 1024

#: First key segment reserved for the stores' own staging area.
STAGING_DIR = ".tmp"

_KEY_CHARS = re.compile(r"[A-Za-z0-9._/-]+")
_MAX_KEY_LENGTH = 1024  # S3's limit
_MAX_SEGMENT_LENGTH = 255  # NAME_MAX of common filesystems


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid object key, else raise ``InvalidInput``.

    A key is ``/``-separated segments of ``[A-Za-z0-9._-]``: no leading or trailing
    ``/``, no empty, ``.`` or ``..`` segment, at most 1024 characters, segments of at
    most 255. The first segment ``.tmp`` is reserved for the stores' staging area.
    """
    problem = _key_problem(key)
    if problem:
        raise InvalidInput(f"invalid object key {key!r}: {problem}", field="key")
    return key


def is_valid_key(key: str) -> bool:
    """Whether ``check_key`` would accept ``key``."""
    return not _key_problem(key)


def _key_problem(key: str) -> str:
    if not key:
        return "it is empty"
    if len(key) > _MAX_KEY_LENGTH:
        return f"it is longer than {_MAX_KEY_LENGTH} characters"
    if not _KEY_CHARS.fullmatch(key):
        return "only letters, digits and . _ - / are allowed"
    segments = key.split("/")
    if any(s == "" for s in segments):
        return "it has an empty segment (a leading, trailing or double '/')"
    if any(s in (".", "..") for s in segments):
        return "'.' and '..' segments are not allowed"
    if any(len(s) > _MAX_SEGMENT_LENGTH for s in segments):
        return f"a segment is longer than {_MAX_SEGMENT_LENGTH} characters"
    if segments[0] == STAGING_DIR:
        return f"keys under {STAGING_DIR}/ are reserved"
    return ""


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it can start a key (``""`` lists everything), else raise.

    Its complete segments (all before the last ``/``) must be valid key segments, so a
    prefix never climbs out of a store's root.
    """
    if not prefix:
        return prefix
    complete = prefix.split("/")[:-1]
    if (
        not _KEY_CHARS.fullmatch(prefix)
        or len(prefix) > _MAX_KEY_LENGTH
        or any(s in ("", ".", "..") for s in complete)
    ):
        raise InvalidInput(f"invalid key prefix {prefix!r}", field="prefix")
    return prefix


def check_range(start: int, end: int | None) -> None:
    """Raise ``InvalidInput`` unless ``[start, end)`` is a well-formed byte range."""
    if start < 0 or (end is not None and end < start):
        raise InvalidInput(f"invalid byte range [{start}, {end})", field="range")


async def write_all(writer: ObjectWriter, chunks: AsyncIterable[bytes] | bytes) -> None:
    """Feed ``chunks`` (one bytes object or an async iterable of them) to ``writer``."""
    if isinstance(chunks, bytes | bytearray | memoryview):
        await writer.write(bytes(chunks))
        return
    async for chunk in chunks:
        await writer.write(chunk)


@dataclass(frozen=True)
class ObjectInfo:
    """An object's key and size in bytes."""

    key: str
    size: int


@dataclass(frozen=True)
class Download:
    """Where a reader gets a stored object: a local file (sent with sendfile or handed
    to nginx), a presigned URL (a redirect), or only the store (streamed)."""

    key: str
    size: int
    local_path: Path | None
    url: str | None


class ObjectWriter(Protocol):
    """A new object being written; it has no key (and is invisible) until ``commit``.

    One task drives a writer: its calls must not overlap.
    """

    async def write(self, data: bytes) -> None:
        """Append ``data``. Streams: the store holds at most a part's worth in memory."""

    @property
    def size(self) -> int:
        """Bytes written so far."""

    async def commit(self, key: str) -> ObjectInfo:
        """Publish what was written under ``key`` atomically, replacing an existing object.

        Raises ``InvalidInput`` for a bad key (the writer stays usable), ``StorageError``
        if the store fails. After a commit the writer accepts nothing more.
        """

    async def abort(self) -> None:
        """Discard what was written. Idempotent; a no-op after ``commit``."""


class ObjectStream(AsyncIterator[bytes]):
    """The bytes of one object (or a range of it), returned by ``ObjectStore.get``.

    It is opened lazily and can be used two ways:

    - ``async for chunk in store.get(key):`` opens on the first iteration, so a missing
      object raises ``NotFound`` from the ``async for`` before any chunk;
    - ``chunks = await store.get(key)`` opens eagerly: ``NotFound`` is raised by the
      ``await``, before anything is iterated, which is what an HTTP handler wants to
      answer 404 before sending a status line. Then ``async for chunk in chunks``.

    ``async with await store.get(key) as chunks:`` also releases the underlying file or
    connection if the consumer stops early; ``aclose()`` does the same by hand. A stream
    iterated to its end releases itself.
    """

    _opened = False
    _closed = False
    #: The whole object's size in bytes (not the range's), set when the stream opens;
    #: what an HTTP layer needs for ``Content-Range`` without a racy separate ``stat``.
    object_size: int | None = None

    async def _open(self) -> None:
        """Open the object; raise ``NotFound`` if it does not exist."""
        raise NotImplementedError

    async def _read(self) -> bytes:
        """Return the next chunk, or ``b""`` at the end."""
        raise NotImplementedError

    async def _release(self) -> None:
        """Release the file or connection; called once."""

    async def open(self) -> Self:
        """Open the object now (idempotent); raises ``NotFound`` if it does not exist."""
        if not self._opened:
            await self._open()
            self._opened = True
        return self

    def __await__(self) -> Generator[Any, None, Self]:
        return self.open().__await__()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        if self._closed:
            raise StopAsyncIteration
        await self.open()
        try:
            chunk = await self._read()
        except BaseException:
            await self.aclose()
            raise
        if not chunk:
            await self.aclose()
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        """Release the underlying file or connection. Idempotent."""
        if not self._closed:
            self._closed = True
            if self._opened:
                await self._release()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class ObjectStore(Protocol):
    """A flat namespace of keys mapping to immutable byte strings."""

    def writer(self) -> AbstractAsyncContextManager[ObjectWriter]:
        """A writer for a new object; leaving the block without ``commit`` aborts it."""

    async def put(self, key: str, chunks: AsyncIterable[bytes] | bytes) -> ObjectInfo:
        """Store ``chunks`` under ``key`` (a writer plus commit).

        The key is checked before ``chunks`` is consumed. If the iterable raises, nothing
        is stored and the exception propagates.
        """

    def get(self, key: str, start: int = 0, end: int | None = None) -> ObjectStream:
        """Stream the bytes ``[start, end)`` of ``key`` (``end=None``: to the end).

        The range is clamped to the object's size; a range past the end is empty. A
        missing object raises ``NotFound`` when the stream is opened (awaited or first
        iterated, see ``ObjectStream``), never after a chunk was produced. A reader sees
        one version of the object from start to end even if it is replaced meanwhile
        (filesystem: the open file; S3: a single GET).
        """

    async def read(self, key: str) -> bytes:
        """The whole object, for small ones (narinfos, manifests). ``NotFound`` if missing."""

    async def stat(self, key: str) -> ObjectInfo | None:
        """The object's info, or ``None`` if it does not exist."""

    async def delete(self, key: str) -> None:
        """Delete ``key``. Idempotent: deleting a missing object is not an error."""

    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Objects whose key starts with ``prefix`` (a plain string prefix), in key order."""

    def local_path(self, key: str) -> Path | None:
        """The file holding ``key`` if the store is local and it exists, else ``None``.

        For serving with sendfile. The path stays valid for an open file descriptor even
        if the object is replaced (replacement is a rename).
        """

    async def presigned_url(self, key: str, expires: int) -> str | None:
        """A URL that GETs ``key`` without credentials for ``expires`` seconds.

        ``None`` if the store cannot sign (filesystem). Does not check existence.
        """
