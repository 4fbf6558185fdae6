"""The ``newc`` cpio format the kernel unpacks an initramfs from.

An archive is a run of entries, each a 110-byte ASCII header (magic ``070701`` and
thirteen 8-digit hex fields), the NUL-terminated name, padding to four bytes, the
data, padding again; ``TRAILER!!!`` ends it. Entries may be device nodes, which is
why we write the archive ourselves: a /dev/console node needs no root to be made.
"""

from __future__ import annotations

import stat
from typing import BinaryIO

_TRAILER = "TRAILER!!!"


class CpioWriter:
    """Writes entries to ``out``; ``close`` adds the trailer. Parents come first."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._inode = 0

    def directory(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | mode, b"", nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644, *, mtime: int = 0) -> None:
        self._entry(name, stat.S_IFREG | mode, data, mtime=mtime)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | mode, b"", rdev=(major, minor))

    def close(self) -> None:
        self._entry(_TRAILER, 0, b"", nlink=1, inode=0)

    def _entry(
        self,
        name: str,
        mode: int,
        data: bytes,
        *,
        nlink: int = 1,
        rdev: tuple[int, int] = (0, 0),
        inode: int | None = None,
        mtime: int = 0,
    ) -> None:
        if inode is None:
            self._inode += 1
            inode = self._inode
        encoded = name.lstrip("/").encode() + b"\0"
        fields = (inode, mode, 0, 0, nlink, mtime, len(data), 0, 0, rdev[0], rdev[1],
                  len(encoded), 0)  # fmt: skip
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        self._out.write(header + encoded + _pad(len(header) + len(encoded)))
        self._out.write(data + _pad(len(data)))


def _pad(size: int) -> bytes:
    return b"\0" * (-size % 4)
