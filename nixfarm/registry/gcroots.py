"""GC roots that keep an image's store paths alive from ``nix-build`` to its last layer.

``nix-build --no-out-link`` leaves its outputs unrooted the moment it exits. Writing an
image's layers reads every path of the closure afterwards, which for a big image takes
minutes; a ``nix-collect-garbage`` in between would delete paths under the layer
writer's feet. So the registry builds with ``--out-link`` pointing into a directory of
its own per build:

    DATA_DIR/registry-gcroots/<host>-<pid>-<random>/result, result-2, ...
        <- /nix/var/nix/gcroots/auto/<hash>   (the indirect roots nix-build registers)

While the links exist the outputs, and with them their whole runtime closure, are
alive. The directory goes when the image is composed or the build fails; Nix drops
the then dangling ``auto`` entries at its next collection.

A process killed mid-build leaves its directory behind, which would pin its paths
forever. The first build of every process removes the directories of processes on the
same host that no longer run (the host and pid are in the name); other hosts sharing
the data dir clean up after themselves.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class GcRoots:
    """Per-build directories of out-links under ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path.resolve()  # the auto roots record the links' absolute paths
        self._host = socket.gethostname()
        self._swept = False

    def _sweep(self) -> None:
        """Remove the directories of this host's processes that are gone."""
        for entry in self.path.iterdir():
            parts = entry.name.rsplit("-", 2)  # mkdtemp's random suffix has no dash
            if (len(parts) == 3 and parts[0] == self._host and parts[1].isdigit()
                    and not _alive(int(parts[1]))):
                shutil.rmtree(entry, ignore_errors=True)

    @contextmanager
    def hold(self) -> Iterator[Path]:
        """An out-link path for nix-build, rooted until the block ends (also on errors)."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not self._swept:
            self._swept = True
            self._sweep()
        directory = Path(tempfile.mkdtemp(prefix=f"{self._host}-{os.getpid()}-",
                                          dir=self.path))
        try:
            yield directory / "result"
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def held(self) -> list[Path]:
        """The out-links that currently exist (every process's)."""
        if not self.path.is_dir():
            return []
        return sorted(link for directory in self.path.iterdir() for link in directory.iterdir())
