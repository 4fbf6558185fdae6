"""Kernel modules: what a ``.ko`` file says it depends on, and a load order.

A module's ``.modinfo`` ELF section is a run of NUL-terminated ``key=value``
strings; ``depends=a,b`` names the modules that must be loaded first. Debian's
package carries no ``modules.dep`` (``depmod`` makes it at install time, which we
skip), so we read that section ourselves: a 64-bit little-endian ELF header gives
the section table, whose string table names each section.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

from nixfarm.errors import NixfarmError


class ModuleError(NixfarmError):
    """A module is missing from the kernel's tree, or is not a module we can read."""


def modinfo(data: bytes) -> dict[str, str]:
    """The ``key=value`` pairs of a module's ``.modinfo`` section (last one wins)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ModuleError("Not a 64-bit little-endian ELF module.")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(index: int) -> tuple[int, int, int]:  # name offset, file offset, size
        base = shoff + index * shentsize
        name, = struct.unpack_from("<I", data, base)
        offset, size = struct.unpack_from("<QQ", data, base + 0x18)
        return name, offset, size

    _, strings, _ = section(shstrndx)
    for index in range(shnum):
        name, offset, size = section(index)
        if data[strings + name : data.index(b"\0", strings + name)] == b".modinfo":
            pairs = (item.partition(b"=") for item in data[offset : offset + size].split(b"\0"))
            return {key.decode(): value.decode(errors="replace") for key, _, value in pairs if key}
    return {}


def module_index(tree: Path) -> dict[str, Path]:
    """Module name (dashes as underscores) -> its file, for a ``lib/modules/<v>`` tree."""
    return {path.name[:-3].replace("-", "_"): path for path in sorted(tree.rglob("*.ko"))}


def load_order(wanted: Iterable[str], index: Mapping[str, Path]) -> list[str]:
    """``wanted`` and everything they depend on, each after its dependencies."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name not in index:
            raise ModuleError(f"The kernel has no module {name}.")
        if name in visiting:
            raise ModuleError(f"Module {name} depends on itself.")
        visiting.add(name)
        depends = modinfo(index[name].read_bytes()).get("depends", "")
        for dependency in filter(None, depends.split(",")):
            visit(dependency.replace("-", "_"))
        order.append(name)

    for name in wanted:
        visit(name.replace("-", "_"))
    return order
