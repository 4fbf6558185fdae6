"""The filesystem object store: one file per key under a root directory.

A key ``nar/abc.nar.zst`` is the file ``ROOT/nar/abc.nar.zst``. Writers fill a fresh
file under ``ROOT/.tmp/``, and ``commit`` fsyncs it and ``os.replace``s it onto the key's
path. Rename within one filesystem is atomic, so a reader opens either the old file or
the complete new one; a reader that already has the old file open keeps reading it to
the end. Staging inside the root (not in /tmp) keeps the rename on one filesystem.

A process that dies mid-write leaves its temporary behind; opening the store removes
temporaries older than an hour (younger ones may belong to a live process sharing the
directory). Empty directories left by ``delete`` are kept: removing them would race
with a concurrent commit creating a file in them, and they cost next to nothing.

All blocking calls run in worker threads (``anyio.to_thread``) so the event loop keeps
serving while a large file is read or fsynced.

One difference from S3 that callers must respect: a key cannot be both an object and
a "directory" (``a`` and ``a/b``); committing the second fails with ``StorageError``.
"""

from __future__ import annotations

import logging
import os
import stat as stat_module
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import BinaryIO

import anyio
from anyio import to_thread

from nixfarm.errors import NotFound, StorageError
from nixfarm.storage.base import (
    DEFAULT_CHUNK_SIZE,
    STAGING_DIR,
    ObjectInfo,
    ObjectStream,
    check_key,
    check_prefix,
    check_range,
    is_valid_key,
    write_all,
)

log = logging.getLogger(__name__)

#: Temporaries older than this (seconds) belong to dead processes.
STALE_AFTER = 3600.0


def _missing(key: str) -> NotFound:
    return NotFound(f"object {key} does not exist", kind="object", name=key)


def _failed(action: str, key: str, error: OSError) -> StorageError:
    return StorageError(f"could not {action} {key}: {error.strerror or error}", key=key)


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; best effort, some filesystems refuse.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _scan(directory: Path) -> list[tuple[str, bool, int]]:
    """``(name, is_dir, size)`` of the regular files and directories in ``directory``.

    Sorted by ``name + "/"`` for subdirectories, so that a depth-first walk produces
    keys in plain string order, the order S3 lists in.
    """
    out: list[tuple[str, bool, int]] = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # deleted while we listed
                if stat_module.S_ISDIR(info.st_mode):
                    out.append((entry.name, True, 0))
                elif stat_module.S_ISREG(info.st_mode):
                    out.append((entry.name, False, info.st_size))
    except (FileNotFoundError, NotADirectoryError):
        return []
    out.sort(key=lambda e: e[0] + "/" if e[1] else e[0])
    return out


class _FileWriter:
    """A temporary file under ``ROOT/.tmp``, renamed onto its key by ``commit``."""

    def __init__(self, store: FilesystemStore, path: Path, file: BinaryIO) -> None:
        self._store = store
        self._path = path
        self._file = file
        self._size = 0
        self._done = False

    @property
    def size(self) -> int:
        return self._size

    async def write(self, data: bytes) -> None:
        if self._done:
            raise StorageError("this writer was already committed or aborted", key="")
        try:
            await to_thread.run_sync(self._file.write, data)
        except OSError as e:
            raise _failed("write a temporary for", str(self._path), e) from e
        self._size += len(data)

    async def commit(self, key: str) -> ObjectInfo:
        target = self._store.path_of(key)
        if self._done:
            raise StorageError("this writer was already committed or aborted", key=key)
        self._done = True
        try:
            await to_thread.run_sync(self._publish, target)
        except OSError as e:
            await to_thread.run_sync(self._discard)
            raise _failed("store", key, e) from e
        return ObjectInfo(key=key, size=self._size)

    def _publish(self, target: Path) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._path, target)
        _fsync_dir(target.parent)

    async def abort(self) -> None:
        if not self._done:
            self._done = True
            await to_thread.run_sync(self._discard)

    def _discard(self) -> None:
        self._file.close()
        self._path.unlink(missing_ok=True)


class _FileStream(ObjectStream):
    """Reads ``[start, end)`` of one open file with ``pread``."""

    def __init__(self, key: str, path: Path, start: int, end: int | None, chunk: int) -> None:
        self._key = key
        self._path = path
        self._pos = start
        self._end = end
        self._chunk = chunk
        self._fd: int | None = None

    async def _open(self) -> None:
        try:
            self._fd, size = await to_thread.run_sync(self._open_file)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise _missing(self._key) from None
        except OSError as e:
            raise _failed("open", self._key, e) from e
        self.object_size = size
        self._end = size if self._end is None else min(self._end, size)

    def _open_file(self) -> tuple[int, int]:
        fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        info = os.fstat(fd)
        if not stat_module.S_ISREG(info.st_mode):
            os.close(fd)
            raise IsADirectoryError(str(self._path))
        return fd, info.st_size

    async def _read(self) -> bytes:
        assert self._fd is not None and self._end is not None
        want = min(self._chunk, self._end - self._pos)
        if want <= 0:
            return b""
        try:
            data = await to_thread.run_sync(os.pread, self._fd, want, self._pos)
        except OSError as e:
            raise _failed("read", self._key, e) from e
        self._pos += len(data)
        return data

    async def _release(self) -> None:
        self._close_fd()

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        # A stream abandoned without aclose() must not leak its descriptor.
        self._close_fd()


class FilesystemStore:
    """An ``ObjectStore`` in a local directory (created if missing)."""

    def __init__(
        self,
        root: Path,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        stale_after: float = STALE_AFTER,
    ) -> None:
        self.root = root.absolute()
        self._staging = self.root / STAGING_DIR
        self._chunk_size = chunk_size
        try:
            self._staging.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _failed("create the store directory", str(self.root), e) from e
        self._sweep(time.time() - stale_after)

    def _sweep(self, before: float) -> None:
        with os.scandir(self._staging) as entries:
            for entry in entries:
                try:
                    if entry.stat(follow_symlinks=False).st_mtime < before:
                        os.unlink(entry.path)
                        log.info("removed stale temporary %s", entry.path)
                except FileNotFoundError:
                    pass  # another process swept it first

    def path_of(self, key: str) -> Path:
        """The file path ``key`` maps to (whether or not it exists); checks the key."""
        return self.root / check_key(key)

    @asynccontextmanager
    async def writer(self) -> AsyncIterator[_FileWriter]:
        path = self._staging / f"{uuid.uuid4().hex}.part"
        try:
            file = await to_thread.run_sync(open, path, "xb")
        except OSError as e:
            raise _failed("create a temporary for", "a new object", e) from e
        writer = _FileWriter(self, path, file)
        try:
            yield writer
        finally:
            # Shielded: a cancelled task must still remove its temporary.
            with anyio.CancelScope(shield=True):
                await writer.abort()

    async def put(self, key: str, chunks: AsyncIterable[bytes] | bytes) -> ObjectInfo:
        check_key(key)
        async with self.writer() as writer:
            await write_all(writer, chunks)
            return await writer.commit(key)

    def get(self, key: str, start: int = 0, end: int | None = None) -> ObjectStream:
        check_range(start, end)
        return _FileStream(key, self.path_of(key), start, end, self._chunk_size)

    async def read(self, key: str) -> bytes:
        path = self.path_of(key)
        try:
            return await to_thread.run_sync(path.read_bytes)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise _missing(key) from None
        except OSError as e:
            raise _failed("read", key, e) from e

    async def stat(self, key: str) -> ObjectInfo | None:
        path = self.path_of(key)
        try:
            info = await to_thread.run_sync(os.stat, path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise _failed("stat", key, e) from e
        if not stat_module.S_ISREG(info.st_mode):
            return None
        return ObjectInfo(key=key, size=info.st_size)

    async def delete(self, key: str) -> None:
        path = self.path_of(key)
        try:
            await to_thread.run_sync(os.unlink, path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            pass
        except OSError as e:
            raise _failed("delete", key, e) from e

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        check_prefix(prefix)
        async for info in self._walk(self.root, "", prefix):
            yield info

    async def _walk(self, directory: Path, rel: str, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Yield the files under ``directory`` (key prefix ``rel``) in key order."""
        entries = await to_thread.run_sync(_scan, directory)
        for name, is_dir, size in entries:
            key = rel + name
            if is_dir:
                if rel == "" and name == STAGING_DIR:
                    continue
                sub = key + "/"
                if sub.startswith(prefix) or prefix.startswith(sub):
                    async for info in self._walk(directory / name, sub, prefix):
                        yield info
            elif key.startswith(prefix) and is_valid_key(key):  # skip strays put by hand
                yield ObjectInfo(key=key, size=size)

    def local_path(self, key: str) -> Path | None:
        path = self.path_of(key)
        return path if path.is_file() else None

    async def presigned_url(self, key: str, expires: int) -> str | None:
        check_key(key)
        return None
