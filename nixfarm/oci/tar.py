"""Encoding of tar headers for deterministic image layers.

A layer holds only three kinds of entry: directories, regular files and symlinks, all
owned by root with one fixed mtime. Those headers are encoded here directly rather than
through :mod:`tarfile`, for two reasons: a closure has tens of thousands of files and
``TarInfo.tobuf`` costs several times more per entry than this; and every byte of the
header is decided here, so a layer's digest cannot change under a Python upgrade.

Format: POSIX ustar (what GNU tar, Go's archive/tar, containerd and podman all read).
Names up to 100 bytes fit the name field; up to 256 bytes they are split at a ``/``
into the 155-byte prefix field; anything longer, a link target over 100 bytes, or a
size past ustar's 8 GiB limit, is carried in a PAX extended header (``x`` entry)
before the entry, as GNU tar does with ``--format=posix``.
"""

from __future__ import annotations

from typing import Final

BLOCK: Final = 512
# GNU tar and Python's tarfile both pad archives to 20 blocks; so does this writer.
RECORD: Final = 20 * BLOCK
END_OF_ARCHIVE: Final = bytes(2 * BLOCK)

REGULAR: Final = b"0"
HARDLINK: Final = b"1"
SYMLINK: Final = b"2"
DIRECTORY: Final = b"5"
_PAX: Final = b"x"

# The mtime of everything in the Nix store, and so of everything in a layer.
MTIME: Final = 1
_MAX_SIZE: Final = 0o77777777777  # 11 octal digits


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _header_block(name: bytes, mode: int, size: int, kind: bytes, linkname: bytes) -> bytes:
    """One 512-byte ustar header; ``name`` and ``linkname`` must already fit."""
    prefix = b""
    if len(name) > 100:
        cut = _split_point(name)
        prefix, name = name[:cut], name[cut + 1 :]
    header = b"".join(
        (
            name.ljust(100, b"\0"),
            _octal(mode, 8),
            b"0000000\0",  # uid
            b"0000000\0",  # gid
            _octal(size, 12),
            _octal(MTIME, 12),
            b"        ",  # checksum placeholder: eight spaces, per the spec
            kind,
            linkname.ljust(100, b"\0"),
            b"ustar\x0000",
            bytes(32),  # uname: empty, numeric ids are authoritative
            bytes(32),  # gname
            b"0000000\0",  # devmajor
            b"0000000\0",  # devminor
            prefix.ljust(155, b"\0"),
            bytes(12),
        )
    )
    checksum = b"%06o\0 " % sum(header)
    return header[:148] + checksum + header[156:]


def _split_point(name: bytes) -> int:
    """Where to split a long ``name`` into prefix and name, or -1 when it cannot be.

    The prefix holds at most 155 bytes and the rest 1..100: the last '/' within the
    first 156 bytes (not a directory's trailing one) leaves the shortest rest.
    """
    cut = name.rfind(b"/", 0, min(156, len(name) - 1))
    if cut <= 0 or len(name) - cut - 1 > 100:
        return -1
    return cut


def _fits(name: bytes) -> bool:
    """Whether ``name`` fits ustar's name field, or name and prefix split at a '/'."""
    return len(name) <= 100 or (len(name) <= 256 and _split_point(name) > 0)


def _pax_record(key: bytes, value: bytes) -> bytes:
    # A record is "<length> <key>=<value>\n" where <length> counts itself too.
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(b"%d" % length) + len(body) != length:
        length = len(b"%d" % length) + len(body)
    return b"%d" % length + body


def padding(size: int) -> bytes:
    """The zero bytes that pad ``size`` bytes of content to a whole block."""
    return bytes(-size % BLOCK)


def header(name: bytes, mode: int, size: int, kind: bytes, linkname: bytes = b"") -> bytes:
    """The header bytes of one entry (a PAX header first when ustar cannot hold it).

    ``name`` is relative (no leading ``/``); directories end in ``/``.
    """
    records = []
    if not _fits(name):
        records.append(_pax_record(b"path", name))
        name = name[:100]
    if len(linkname) > 100:
        records.append(_pax_record(b"linkpath", linkname))
        linkname = linkname[:100]
    if size > _MAX_SIZE:
        records.append(_pax_record(b"size", b"%d" % size))
        size = 0
    entry = _header_block(name, mode, size, kind, linkname)
    if not records:
        return entry
    data = b"".join(records)
    pax_name = b"PaxHeaders/" + name.rstrip(b"/").rsplit(b"/", 1)[-1][:80]
    return _header_block(pax_name, 0o644, len(data), _PAX, b"") + data + padding(len(data)) + entry


def end_padding(total: int) -> bytes:
    """End-of-archive blocks plus padding of the archive to a whole record."""
    total += len(END_OF_ARCHIVE)
    return END_OF_ARCHIVE + bytes(-total % RECORD)
