"""Streaming (de)compressors for the NAR compressions Nix speaks.

Every decompressor writes its output to a sink in bounded pieces, so a small
compressed upload that expands enormously (a "zip bomb") never sits in memory whole.
"""

from __future__ import annotations

import bz2
import lzma
from collections.abc import Callable
from typing import IO, Protocol, cast

import zstandard

from nixfarm.errors import InvalidInput

# Extension of the stored NAR file for each compression, as Nix names them.
EXTENSIONS = {"none": "", "xz": ".xz", "zstd": ".zst", "bzip2": ".bz2"}
_BY_EXTENSION = {ext: name for name, ext in EXTENSIONS.items() if ext}

Sink = Callable[[bytes], None]
_PIECE = 1 << 20


class Decompressor(Protocol):
    def feed(self, data: bytes) -> None:
        """Decompress ``data``, passing the output to the sink in pieces."""

    def finish(self) -> None:
        """Check the stream ended cleanly; raise InvalidInput if it was cut short."""


def compression_of(filename: str) -> str:
    """The compression of a ``nar/<hash>.nar[.ext]`` file name."""
    if filename.endswith(".nar"):
        return "none"
    stem, dot, ext = filename.rpartition(".")
    if dot and stem.endswith(".nar") and "." + ext in _BY_EXTENSION:
        return _BY_EXTENSION["." + ext]
    raise InvalidInput(
        f"unsupported NAR file name {filename!r}: expected <hash>.nar with one of "
        f"{', '.join(repr(e) for e in ['', *_BY_EXTENSION])}",
        field="url",
    )


class _Plain:
    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def feed(self, data: bytes) -> None:
        self._sink(data)

    def finish(self) -> None:
        pass


class _Bounded:
    """xz and bzip2: the stdlib decompressors take a ``max_length``."""

    def __init__(self, sink: Sink, make: Callable[[], lzma.LZMADecompressor | bz2.BZ2Decompressor],
                 name: str) -> None:
        self._sink = sink
        self._d = make()
        self._name = name

    def feed(self, data: bytes) -> None:
        try:
            out = self._d.decompress(data, _PIECE)
            while True:
                if out:
                    self._sink(out)
                if self._d.eof or self._d.needs_input:
                    break
                out = self._d.decompress(b"", _PIECE)
        except (lzma.LZMAError, OSError, EOFError) as e:
            raise InvalidInput(f"the NAR is not valid {self._name}: {e}", field="body") from None
        if self._d.eof and self._d.unused_data:
            raise InvalidInput(f"trailing data after the {self._name} stream", field="body")

    def finish(self) -> None:
        if not self._d.eof:
            raise InvalidInput(f"the {self._name} stream is truncated", field="body")


class _SinkFile:
    """The zstd writer's output file. It holds the sink only while a call into the
    writer runs: the writer is a C object the cycle collector cannot see into, so a
    lasting reference from it to the sink (whose owner usually owns this decompressor)
    would make a cycle that is never freed, leaking the ~2 MB decompression window
    and everything the owner holds, once per NAR."""

    def __init__(self) -> None:
        self.sink: Sink | None = None

    def write(self, data: bytes) -> int:
        assert self.sink is not None, "the zstd writer wrote outside feed/finish"
        self.sink(bytes(data))
        return len(data)


class _Zstd:
    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._file = _SinkFile()
        self._writer = zstandard.ZstdDecompressor().stream_writer(
            cast(IO[bytes], self._file),
            write_size=_PIECE,
            write_return_read=True,
            closefd=False,
        )
        self._fed = 0

    def feed(self, data: bytes) -> None:
        self._file.sink = self._sink
        try:
            self._writer.write(data)
        except zstandard.ZstdError as e:
            raise InvalidInput(f"the NAR is not valid zstd: {e}", field="body") from None
        finally:
            self._file.sink = None
        self._fed += len(data)

    def finish(self) -> None:
        self._file.sink = self._sink
        try:
            self._writer.flush()  # type: ignore[no-untyped-call]
        except zstandard.ZstdError as e:
            raise InvalidInput(f"the NAR is not valid zstd: {e}", field="body") from None
        finally:
            self._file.sink = None
        # stream_writer swallows a missing frame end; the NAR hash check catches the
        # lost bytes, but say what really happened when we can tell.
        if self._fed == 0:
            raise InvalidInput("the zstd stream is empty", field="body")


def decompressor(compression: str, sink: Sink) -> Decompressor:
    if compression == "none":
        return _Plain(sink)
    if compression == "xz":
        return _Bounded(sink, lzma.LZMADecompressor, "xz")
    if compression == "bzip2":
        return _Bounded(sink, bz2.BZ2Decompressor, "bzip2")
    if compression == "zstd":
        return _Zstd(sink)
    raise InvalidInput(f"unsupported compression {compression!r}", field="compression")


class Compressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


class _NoCompression:
    def compress(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


def compressor(compression: str, level: int | None = None) -> Compressor:
    """A streaming compressor: feed ``compress`` chunks, then ``flush`` once."""
    if compression == "none":
        return _NoCompression()
    if compression == "xz":
        return lzma.LZMACompressor(preset=6 if level is None else level)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3 if level is None else level).compressobj()
    if compression == "bzip2":
        return bz2.BZ2Compressor(9 if level is None else level)
    raise InvalidInput(f"unsupported compression {compression!r}", field="compression")
