"""Deterministic, compressed layer tarballs written in one streaming pass.

A layer of store paths unpacks to ``nix/store/<name>/...``; the customisation layer
holds the files that make a root filesystem usable (``/bin`` links, ``/etc/passwd``).
Both are written the same way:

    files ──> tar headers + file chunks ──> 1 MiB buffer ─┬─> sha256 (diff_id)
                                                          └─> compressor ─┬─> sha256 (digest), size
                                                                          └─> sink(bytes)

Files are read straight into the buffer (``readinto``), so neither a file nor the layer
is ever held whole in memory: the footprint is the buffer plus the compressor's state.
Small files are batched into one buffer, so the compressor and the hashes see large
calls whatever the file sizes.

Determinism: entries are sorted by name bytes and visited depth first (the order of
GNU ``tar --sort=name``); ``nix`` and ``nix/store`` come first; every entry is owned by
uid/gid 0 with empty user/group names and mtime 1; modes are normalised to what a NAR
can express (directories 0555, files 0444 or 0555 by their executable bit, symlinks
0777), so a layer's bytes depend on the paths' NAR contents, not on the store's file
modes or times. Files hard-linked together (``nix-store --optimise`` links identical
files across paths) are written once and then as hard link entries, as GNU tar does:
an optimised store would otherwise make layers far larger. That makes a layer's bytes
depend on which of its files the store has linked; the layer cache keys layers by
their paths and builds each once per storage, so this costs no reuse.

Compression: gzip is ISA-L's igzip (the ``isal`` package); its levels are 0-3, default
3, at roughly 10x zlib's speed for output about 10% larger than ``gzip -6``. zstd
levels are zstd's (1-22, default 3).

The sink is a plain synchronous callable taking each compressed chunk, e.g. a file's
``write``. Async callers run the writer in a worker thread: :func:`write_layer_async`
does that and bridges an async sink back to the event loop.
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import anyio.from_thread
import anyio.to_thread
import zstandard
from isal import isal_zlib

from nixfarm.errors import InvalidInput
from nixfarm.oci import tar
from nixfarm.oci.digest import Digest
from nixfarm.oci.manifest import Compression, LayerInfo

Sink = Callable[[bytes], object]
AsyncSink = Callable[[bytes], Coroutine[Any, Any, object]]

CHUNK = 1 << 20
DEFAULT_LEVELS: Mapping[str, int] = {"gzip": 3, "zstd": 3}
_LEVELS = {"gzip": range(0, 4), "zstd": range(1, 23)}
_STORE = b"nix/store/"


class _Compressor(Protocol):
    def compress(self, data: bytes | memoryview, /) -> bytes: ...

    def flush(self) -> bytes: ...


def _compressor(compression: str, level: int | None) -> _Compressor:
    if compression not in _LEVELS:
        raise InvalidInput(f"Layer compression {compression!r} is not gzip or zstd.", "compression")
    if level is None:
        level = DEFAULT_LEVELS[compression]
    if level not in _LEVELS[compression]:
        allowed = _LEVELS[compression]
        raise InvalidInput(
            f"{compression} level {level} is outside {allowed.start}..{allowed.stop - 1}.",
            "level",
        )
    if compression == "gzip":
        # wbits 31: a gzip container (mtime 0, no file name), so output is reproducible.
        return isal_zlib.compressobj(level, isal_zlib.DEFLATED, 31)
    return zstandard.ZstdCompressor(level=level).compressobj()


class _LayerStream:
    """Takes tar bytes, emits compressed chunks to a sink, and digests both sides."""

    def __init__(self, sink: Sink, compression: Compression, level: int | None) -> None:
        self._compressor = _compressor(compression, level)
        self._compression: Compression = compression
        self._sink = sink
        self._buffer = bytearray(CHUNK)
        self._view = memoryview(self._buffer)
        self._fill = 0
        self._total = 0
        self._diff_id = hashlib.sha256()
        self._digest = hashlib.sha256()
        self._size = 0

    def write(self, data: bytes) -> None:
        while data:
            n = min(len(data), CHUNK - self._fill)
            self._view[self._fill : self._fill + n] = data[:n]
            self._fill += n
            data = data[n:]
            if self._fill == CHUNK:
                self._flush()

    def copy_file(self, path: bytes, size: int) -> None:
        """Append ``size`` bytes of the file at ``path``, read straight into the buffer."""
        with open(path, "rb", buffering=0) as f:
            remaining = size
            while remaining:
                want = min(remaining, CHUNK - self._fill)
                got = f.readinto(self._view[self._fill : self._fill + want])
                if not got:
                    raise InvalidInput(
                        f"{os.fsdecode(path)} shrank while it was being archived.", "paths"
                    )
                self._fill += got
                remaining -= got
                if self._fill == CHUNK:
                    self._flush()
        self.write(tar.padding(size))

    def _emit(self, compressed: bytes) -> None:
        if compressed:
            self._digest.update(compressed)
            self._size += len(compressed)
            self._sink(compressed)

    def _flush(self) -> None:
        data = self._view[: self._fill]
        self._diff_id.update(data)
        self._emit(self._compressor.compress(data))
        self._total += self._fill
        self._fill = 0

    def close(self) -> LayerInfo:
        self.write(tar.end_padding(self._total + self._fill))
        self._flush()
        self._emit(self._compressor.flush())
        return LayerInfo(
            digest=Digest.from_hasher(self._digest),
            size=self._size,
            diff_id=Digest.from_hasher(self._diff_id),
            compression=self._compression,
        )


def _archive_tree(
    out: _LayerStream, source: bytes, name: bytes, linked: dict[tuple[int, int], bytes]
) -> None:
    """Write the tree at ``source`` as ``name``, depth first in name order.

    ``linked`` maps (device, inode) of multiply-linked files already written in this
    layer to their names, so later links to them become hard link entries.
    """
    stack = [(source, name)]
    while stack:
        path, arcname = stack.pop()
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            out.write(tar.header(arcname, 0o777, 0, tar.SYMLINK, os.readlink(path)))
        elif stat.S_ISDIR(st.st_mode):
            out.write(tar.header(arcname + b"/", 0o555, 0, tar.DIRECTORY))
            children = sorted(os.listdir(path), reverse=True)
            stack.extend((os.path.join(path, c), arcname + b"/" + c) for c in children)
        elif stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and (st.st_dev, st.st_ino) in linked:
            target = linked[st.st_dev, st.st_ino]
            out.write(tar.header(arcname, 0o444, 0, tar.HARDLINK, target))
        elif stat.S_ISREG(st.st_mode):
            if st.st_nlink > 1:
                linked[st.st_dev, st.st_ino] = arcname
            mode = 0o555 if st.st_mode & 0o111 else 0o444
            out.write(tar.header(arcname, mode, st.st_size, tar.REGULAR))
            out.copy_file(path, st.st_size)
        else:
            raise InvalidInput(f"{os.fsdecode(path)} is not a file, directory or symlink.", "paths")


def write_layer(
    paths: Sequence[Path | str],
    sink: Sink,
    *,
    compression: Compression = "gzip",
    level: int | None = None,
) -> LayerInfo:
    """Write the layer holding store ``paths`` to ``sink``; return its digests.

    Each path is archived as ``nix/store/<its base name>``, wherever it lives, so a
    test can pass directories laid out like store paths. ``sink`` receives the
    compressed bytes in order, in chunks of up to about 1 MiB.
    """
    sources: dict[bytes, bytes] = {}
    for p in paths:
        source = os.fsencode(os.path.abspath(p))
        base = os.path.basename(source)
        if not base or base in (b".", b".."):
            raise InvalidInput(f"{os.fsdecode(source)!r} is not a store path.", "paths")
        if base in sources and sources[base] != source:
            raise InvalidInput(
                f"Two paths are both named {os.fsdecode(base)!r} in one layer.", "paths"
            )
        sources[base] = source
    out = _LayerStream(sink, compression, level)
    # The parents are written rather than left for each unpacker to invent (with
    # modes of its choosing), so every layer unpacks alike on every runtime.
    out.write(tar.header(b"nix/", 0o755, 0, tar.DIRECTORY))
    out.write(tar.header(_STORE, 0o755, 0, tar.DIRECTORY))
    linked: dict[tuple[int, int], bytes] = {}
    for base in sorted(sources):
        _archive_tree(out, sources[base], _STORE + base, linked)
    return out.close()


def _image_path(path: str) -> tuple[bytes, ...]:
    """``/usr/bin/env`` -> (b"usr", b"bin", b"env"), refusing anything but a plain path."""
    parts = path.strip("/").split("/")
    if any(part in ("", ".", "..") or "\0" in part for part in parts):
        raise InvalidInput(f"{path!r} is not a plain path inside the image.", "path")
    return tuple(os.fsencode(part) for part in parts)


def write_customisation_layer(
    symlinks: Mapping[str, str],
    files: Mapping[str, tuple[bytes, int]],
    dirs: Mapping[str, int] | Sequence[str],
    sink: Sink,
    *,
    compression: Compression = "gzip",
    level: int | None = None,
) -> LayerInfo:
    """Write the top layer of an image: symlinks, small files and directories.

    ``symlinks`` maps a path in the image to its target; ``files`` maps a path to its
    content and mode; ``dirs`` lists directories (mode 0755) or maps them to a mode
    (``{"/tmp": 0o1777}``). Missing parent directories are added with mode 0755.
    """
    dir_modes = dict.fromkeys(dirs, 0o755) if not isinstance(dirs, Mapping) else dict(dirs)
    entries: dict[tuple[bytes, ...], tuple[bytes, int, bytes]] = {}
    for kind, items in (
        (tar.SYMLINK, {p: (os.fsencode(t), 0o777) for p, t in symlinks.items()}),
        (tar.REGULAR, {p: (data, mode) for p, (data, mode) in files.items()}),
        (tar.DIRECTORY, {p: (b"", mode) for p, mode in dir_modes.items()}),
    ):
        for path, (payload, mode) in items.items():
            key = _image_path(path)
            if key in entries:
                raise InvalidInput(f"{path!r} is given twice in the layer.", "path")
            entries[key] = (kind, mode & 0o7777, payload)
    for key in list(entries):
        for depth in range(1, len(key)):
            parent = key[:depth]
            if parent not in entries:
                entries[parent] = (tar.DIRECTORY, 0o755, b"")
            elif entries[parent][0] != tar.DIRECTORY:
                raise InvalidInput(
                    f"{os.fsdecode(b'/'.join(parent))!r} is both a directory and a file.",
                    "path",
                )
    out = _LayerStream(sink, compression, level)
    # Sorting by path components gives depth-first name order: "a", "a/x", "a-b".
    for key in sorted(entries):
        kind, mode, payload = entries[key]
        name = b"/".join(key)
        if kind == tar.DIRECTORY:
            out.write(tar.header(name + b"/", mode, 0, kind))
        elif kind == tar.SYMLINK:
            out.write(tar.header(name, mode, 0, kind, payload))
        else:
            out.write(tar.header(name, mode, len(payload), kind))
            out.write(payload + tar.padding(len(payload)))
    return out.close()


def _bridge(sink: AsyncSink) -> Sink:
    def write(chunk: bytes) -> None:
        anyio.from_thread.run(sink, chunk)

    return write


async def write_layer_async(
    paths: Sequence[Path | str],
    sink: AsyncSink,
    *,
    compression: Compression = "gzip",
    level: int | None = None,
) -> LayerInfo:
    """:func:`write_layer` in a worker thread, handing chunks to an async ``sink``."""
    job = functools.partial(write_layer, paths, _bridge(sink), compression=compression, level=level)
    return await anyio.to_thread.run_sync(job)


async def write_customisation_layer_async(
    symlinks: Mapping[str, str],
    files: Mapping[str, tuple[bytes, int]],
    dirs: Mapping[str, int] | Sequence[str],
    sink: AsyncSink,
    *,
    compression: Compression = "gzip",
    level: int | None = None,
) -> LayerInfo:
    """:func:`write_customisation_layer` in a worker thread, with an async ``sink``."""
    job = functools.partial(
        write_customisation_layer,
        symlinks,
        files,
        dirs,
        _bridge(sink),
        compression=compression,
        level=level,
    )
    return await anyio.to_thread.run_sync(job)
