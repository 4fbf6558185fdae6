"""The S3 object store, on any S3-compatible service, through obstore.

How a writer stays streaming *and* atomic when the key is chosen only at ``commit``
(content-addressed keys are known once the hash is):

S3 makes a single PUT and a completed multipart upload atomic, but both name their key
when they start. So a writer buffers in memory until it holds more than one part
(``part_size``, 8 MiB by default):

- if ``commit`` comes first (narinfos, manifests, logs, most layers), the buffer is
  PUT straight to the final key: one request, atomic;
- otherwise the writer starts a multipart upload to a staging key ``.tmp/<uuid>``,
  streams the rest part by part (at most ``max_concurrency`` parts in flight, so memory
  stays at a few parts whatever the size), and ``commit`` completes the upload, copies
  the staged object onto the final key server-side (CopyObject is atomic too), and
  deletes the staging key.

The copy costs the service a second write of large objects, and caps them at CopyObject's
5 GiB limit; in exchange the code needs nothing obstore does not expose. ``abort``
aborts the multipart upload, so nothing is left behind. A process that dies mid-write
can leave an incomplete multipart upload (invisible; configure the bucket's
AbortIncompleteMultipartUpload lifecycle rule) or, if it dies between completing and
copying, a ``.tmp/`` object: the first writer of each ``S3Store`` deletes staged
objects older than an hour. ``list`` never shows ``.tmp/``, and keys cannot name it.

Reads are single GETs, so a reader sees one version from its first byte to its last.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import obstore
import obstore.exceptions
import obstore.store

from nixfarm.errors import InvalidInput, NotFound, StorageError
from nixfarm.storage.base import (
    DEFAULT_CHUNK_SIZE,
    STAGING_DIR,
    ObjectInfo,
    ObjectStream,
    check_key,
    check_prefix,
    check_range,
    write_all,
)

if TYPE_CHECKING:
    from obstore import AsyncWritableFile, BytesStream, GetOptions

log = logging.getLogger(__name__)

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for all parts but the last
MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # SigV4's limit
STALE_AFTER = timedelta(hours=1)


def _missing(key: str) -> NotFound:
    return NotFound(f"object {key} does not exist", kind="object", name=key)


@contextmanager
def _mapped(action: str, key: str, *, writing: bool = False) -> Iterator[None]:
    """Turn obstore's exceptions into ``NotFound`` and ``StorageError``.

    obstore reports every HTTP 404 as ``FileNotFoundError``. Reading, that means the
    object is missing, unless S3 says the *bucket* is; writing, it is always a failure.
    """
    try:
        yield
    except FileNotFoundError as e:
        if writing or "NoSuchBucket" in str(e):
            raise _storage_error(action, key, e) from e
        raise _missing(key) from None
    except (obstore.exceptions.BaseError, OSError) as e:
        raise _storage_error(action, key, e) from e


def _storage_error(action: str, key: str, error: Exception) -> StorageError:
    # obstore's messages carry a multi-line debug dump; the first line says it.
    summary = (str(error).splitlines() or [type(error).__name__])[0][:300]
    return StorageError(f"could not {action} {key} in S3: {summary}", key=key)


class _S3Writer:
    """Buffers one part in memory, then streams a multipart upload to a staging key."""

    def __init__(self, owner: S3Store) -> None:
        self._owner = owner
        self._buffer = bytearray()
        self._staged: AsyncWritableFile | None = None
        self._staged_key = ""
        self._size = 0
        self._done = False

    @property
    def size(self) -> int:
        return self._size

    async def write(self, data: bytes) -> None:
        if self._done:
            raise StorageError("this writer was already committed or aborted", key="")
        if self._staged is None:
            self._buffer += data
            if len(self._buffer) > self._owner.part_size:
                await self._stage()
        else:
            with _mapped("upload", self._staged_key, writing=True):
                await self._staged.write(data)
        self._size += len(data)

    async def _stage(self) -> None:
        self._staged_key = f"{STAGING_DIR}/{uuid.uuid4().hex}"
        self._staged = obstore.open_writer_async(
            self._owner.store,
            self._staged_key,
            buffer_size=self._owner.part_size,
            max_concurrency=self._owner.max_concurrency,
        )
        pending, self._buffer = bytes(self._buffer), bytearray()
        with _mapped("upload", self._staged_key, writing=True):
            await self._staged.write(pending)

    async def commit(self, key: str) -> ObjectInfo:
        check_key(key)
        if self._done:
            raise StorageError("this writer was already committed or aborted", key=key)
        self._done = True
        store = self._owner.store
        if self._staged is None:
            body, self._buffer = bytes(self._buffer), bytearray()
            with _mapped("store", key, writing=True):
                await obstore.put_async(store, key, body, use_multipart=False)
            return ObjectInfo(key=key, size=self._size)
        try:
            with _mapped("upload", self._staged_key, writing=True):
                await self._staged.close()  # completes the multipart upload
            with _mapped("store", key, writing=True):
                await obstore.copy_async(store, self._staged_key, key)
        finally:
            with anyio.CancelScope(shield=True):
                await self._owner.remove_staged(self._staged_key)
        return ObjectInfo(key=key, size=self._size)

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._buffer = bytearray()
        if self._staged is not None:
            # obstore exposes "abort the multipart upload" only as leaving the writer's
            # context with an exception; that is what this call is.
            reason = StorageError("writer aborted", key=self._staged_key)
            try:
                await self._staged.__aexit__(StorageError, reason, None)
            except (obstore.exceptions.BaseError, OSError) as e:
                log.warning("could not abort the upload of %s: %s", self._staged_key, e)


class _S3Stream(ObjectStream):
    """One ranged GET, streamed in chunks of at least the store's ``chunk_size``."""

    def __init__(self, owner: S3Store, key: str, start: int, end: int | None) -> None:
        self._owner = owner
        self._key = key
        self._start = start
        self._end = end
        self._chunks: BytesStream | None = None

    async def _open(self) -> None:
        if self._end == self._start:  # S3 cannot ask for an empty range
            info = await self._owner.stat(self._key)
            if info is None:
                raise _missing(self._key)
            self.object_size = info.size
            return
        options: GetOptions = {}
        if self._end is not None:
            options["range"] = (self._start, self._end)
        elif self._start:
            options["range"] = {"offset": self._start}
        try:
            with _mapped("read", self._key):
                result = await obstore.get_async(self._owner.store, self._key, options=options)
        except StorageError:
            if not self._start:
                raise
            # S3 answers 416 to a range that starts at or past the end; ours is empty.
            info = await self._owner.stat(self._key)
            if info is None:
                raise _missing(self._key) from None
            if self._start < info.size:
                raise
            self.object_size = info.size
            return
        self.object_size = result.meta["size"]
        self._chunks = result.stream(min_chunk_size=self._owner.chunk_size)

    async def _read(self) -> bytes:
        if self._chunks is None:
            return b""
        with _mapped("read", self._key):
            try:
                return await self._chunks.__anext__()
            except StopAsyncIteration:
                return b""

    async def _release(self) -> None:
        self._chunks = None  # dropping the stream closes the connection


class S3Store:
    """An ``ObjectStore`` in an S3 bucket, optionally under a key prefix."""

    def __init__(
        self,
        bucket: str,
        endpoint: str,
        region: str,
        access_key_id: str,
        secret_access_key: str,
        prefix: str = "",
        allow_http: bool = True,
        *,
        part_size: int = 8 * 1024 * 1024,
        max_concurrency: int = 2,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        request_timeout: timedelta = timedelta(hours=1),
        stale_after: timedelta = STALE_AFTER,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise InvalidInput(f"part_size must be at least {MIN_PART_SIZE}", field="part_size")
        self.bucket = bucket
        self.part_size = part_size
        self.max_concurrency = max_concurrency
        self.chunk_size = chunk_size
        self._stale_after = stale_after
        self._swept = False
        config: obstore.store.S3Config = {"region": region}
        if endpoint:
            config["endpoint"] = endpoint
        if access_key_id or secret_access_key:
            config["access_key_id"] = access_key_id
            config["secret_access_key"] = secret_access_key
        self.store = obstore.store.S3Store(
            bucket,
            prefix=prefix.strip("/") or None,
            config=config,
            client_options={
                "allow_http": allow_http,
                "connect_timeout": timedelta(seconds=10),
                # Covers the whole response body: a slow reader of a big object needs long.
                "timeout": request_timeout,
            },
        )

    @asynccontextmanager
    async def writer(self) -> AsyncIterator[_S3Writer]:
        if not self._swept:
            self._swept = True
            await self._sweep(datetime.now(UTC) - self._stale_after)
        writer = _S3Writer(self)
        try:
            yield writer
        finally:
            with anyio.CancelScope(shield=True):
                await writer.abort()

    async def _sweep(self, before: datetime) -> None:
        """Delete staged objects left by processes that died between upload and copy."""
        try:
            async for batch in obstore.list(self.store, STAGING_DIR):
                for meta in batch:
                    if meta["last_modified"] < before:
                        await self.remove_staged(meta["path"])
        except (obstore.exceptions.BaseError, OSError) as e:
            log.warning("could not sweep %s/ in bucket %s: %s", STAGING_DIR, self.bucket, e)

    async def remove_staged(self, key: str) -> None:
        try:
            await obstore.delete_async(self.store, key)
        except (obstore.exceptions.BaseError, OSError) as e:
            log.warning("could not delete staged object %s: %s", key, e)

    async def put(self, key: str, chunks: AsyncIterable[bytes] | bytes) -> ObjectInfo:
        check_key(key)
        async with self.writer() as writer:
            await write_all(writer, chunks)
            return await writer.commit(key)

    def get(self, key: str, start: int = 0, end: int | None = None) -> ObjectStream:
        check_range(start, end)
        return _S3Stream(self, check_key(key), start, end)

    async def read(self, key: str) -> bytes:
        check_key(key)
        with _mapped("read", key):
            result = await obstore.get_async(self.store, key)
            return bytes(await result.bytes_async())

    async def stat(self, key: str) -> ObjectInfo | None:
        check_key(key)
        try:
            with _mapped("stat", key):
                meta = await obstore.head_async(self.store, key)
        except NotFound:
            return None
        return ObjectInfo(key=key, size=meta["size"])

    async def delete(self, key: str) -> None:
        check_key(key)
        try:
            with _mapped("delete", key):
                await obstore.delete_async(self.store, key)
        except NotFound:
            pass  # S3 itself does not complain; some compatible services do

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        check_prefix(prefix)
        # obstore lists by whole path segments; narrow to the prefix's directory, start
        # after prefix[:-1] (which sorts before every match), and stop past the
        # matches: S3 lists in key order.
        directory = prefix.rpartition("/")[0]
        stream = obstore.list(
            self.store, directory or None, offset=prefix[:-1] or None, chunk_size=1000
        )
        with _mapped("list", prefix or "/"):
            async for batch in stream:
                for meta in batch:
                    key = meta["path"]
                    if key.startswith(prefix):
                        if key.partition("/")[0] != STAGING_DIR:
                            yield ObjectInfo(key=key, size=meta["size"])
                    elif key > prefix:
                        return

    def local_path(self, key: str) -> Path | None:
        check_key(key)
        return None

    async def presigned_url(self, key: str, expires: int) -> str | None:
        check_key(key)
        if not 0 < expires <= MAX_PRESIGN_SECONDS:
            raise InvalidInput(
                f"a presigned URL must expire within 1 to {MAX_PRESIGN_SECONDS} seconds",
                field="expires",
            )
        with _mapped("sign a URL for", key):
            return await obstore.sign_async(self.store, "GET", key, timedelta(seconds=expires))
