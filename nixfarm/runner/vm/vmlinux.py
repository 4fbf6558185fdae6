"""The guest kernel uncompressed, booted straight at its PVH entry point.

A ``bzImage`` (``vmlinuz``) is a small program that decompresses the real kernel and
relocates it before jumping to it. Under TCG that program is emulated: 50 MB of LZ4
decompressed by an emulated CPU, at every boot. qemu can instead load the
uncompressed ELF kernel (``vmlinux``) itself and enter it through the PVH entry point
the kernel announces in an ELF note (``CONFIG_PVH``, on in Debian's kernels): the
guest starts in the kernel proper. So the runner decompresses it once, on the host,
next to the package's ``vmlinuz`` (``vmlinux-<version>``), and boots that.

The compressed payload's place is in the boot header (``payload_offset`` and
``payload_length``, boot protocol 2.08+); its format is told by its magic: gzip and
xz with Python's own modules, LZ4 and zstd with Debian's ``lz4`` and ``zstd``
commands when they are installed. Anything else, or a kernel without the PVH note,
and the bzImage is booted as before: slower, never wrong.
"""

from __future__ import annotations

import logging
import lzma
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

log = logging.getLogger("nixfarm.runner")
#: ELF note (name "Xen") with the kernel's 32-bit PVH entry point.
_PHYS32_ENTRY = 18
_TOOLS = {b"\x02\x21\x4c\x18": "lz4", b"\x28\xb5\x2f\xfd": "zstd"}


def direct_kernel(bzimage: Path) -> Path:
    """The uncompressed kernel beside ``bzimage`` (made now if needed), or ``bzimage``
    itself when it cannot be made or booted that way."""
    target = bzimage.with_name(bzimage.name.replace("vmlinuz", "vmlinux", 1))
    if target != bzimage and target.exists():
        return target
    try:
        elf = _decompress(_payload(bzimage.read_bytes()))
        if not has_pvh_entry(elf):
            raise ValueError("it has no PVH entry point")
    except (OSError, ValueError, EOFError, lzma.LZMAError, zlib.error) as e:
        log.info("booting %s compressed: cannot boot it uncompressed (%s)", bzimage.name, e)
        return bzimage
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    partial.write_bytes(elf)
    partial.rename(target)
    return target


def _payload(image: bytes) -> bytes:
    if image[0x202:0x206] != b"HdrS" or struct.unpack_from("<H", image, 0x206)[0] < 0x208:
        raise ValueError("not a bzImage of boot protocol 2.08 or later")
    setup_sectors = image[0x1F1] or 4
    offset, length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sectors + 1) * 512 + offset
    return image[start : start + length]


def _decompress(payload: bytes) -> bytes:
    if payload[:2] == b"\x1f\x8b":
        return zlib.decompressobj(wbits=31).decompress(payload)
    if payload[:6] == b"\xfd7zXZ\x00":
        return lzma.LZMADecompressor().decompress(payload)
    tool = _TOOLS.get(payload[:4])
    if tool is None:
        raise ValueError(f"its compression (magic {payload[:4].hex()}) is not one we know")
    if shutil.which(tool) is None:
        raise ValueError(f"it is compressed with {tool}, which is not installed")
    done = subprocess.run([tool, "-d", "-c"], input=payload, capture_output=True, check=False)
    if not done.stdout.startswith(b"\x7fELF"):
        raise ValueError(f"{tool} -d failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def has_pvh_entry(elf: bytes) -> bool:
    """Whether ``elf`` is a 64-bit kernel with the PVH entry note qemu boots it by."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for index in range(phnum):
        kind, _, offset, _, _, size = struct.unpack_from("<IIQQQQ", elf, phoff + index * phentsize)
        if kind != 4:  # PT_NOTE
            continue
        at, end = offset, offset + size
        while at + 12 <= end:
            namesz, descsz, note = struct.unpack_from("<III", elf, at)
            name = elf[at + 12 : at + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and note == _PHYS32_ENTRY:
                return True
            at += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False
