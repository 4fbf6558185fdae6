"""The shared libraries programs load, as ``ldd`` names them: what a sandbox binds for
the host's Nix client (``nixd.client_files``) and what the builders' netboot image
carries beside its programs (``nixfarm/netboot/image.py``). One reading of ``ldd``'s
output, and one rule for glibc's name service modules."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

from nixfarm.errors import NixfarmError

#: glibc's name service modules: loaded at run time (never named by ``ldd``), and
#: needed: Nix preloads them at start (it warns without them), and a builder resolves
#: the users of /etc/passwd and the farm's host name through them.
NSS_MODULES = ("libnss_files.so.2", "libnss_dns.so.2")
#: A library on a line of ``ldd``'s output ("libc.so.6 => /lib/... (0x...)", or the
#: loader's "/lib64/ld-linux-x86-64.so.2 (0x...)").
_LDD_LINE = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)")
_BATCH = 200


def shared_libraries(objects: Sequence[str | Path], *, check: bool = True) -> list[str]:
    """The libraries ``objects`` load (the dynamic loader included), in the order
    ``ldd`` names them, each once; with glibc's ``NSS_MODULES`` found beside libc.

    ``check``: ``ldd`` failing is an error (NixfarmError, its message quoted); without
    it, objects ``ldd`` cannot read (static programs, scripts) are passed over.
    """
    found: dict[str, None] = {}
    batch = [str(o) for o in objects]
    for start in range(0, len(batch), _BATCH):
        part = batch[start : start + _BATCH]
        done = subprocess.run(["ldd", *part], capture_output=True, text=True, check=False,
                              env={**os.environ, "LC_ALL": "C"})
        if check and done.returncode != 0:
            raise NixfarmError(f"ldd {' '.join(part)} failed: {done.stderr.strip()}")
        for match in _LDD_LINE.finditer(done.stdout):
            found.setdefault(match.group(1))
    for library in list(found):
        if Path(library).name == "libc.so.6":
            for module in NSS_MODULES:
                candidate = Path(library).parent / module
                if candidate.exists():
                    found.setdefault(str(candidate))
    return list(found)
