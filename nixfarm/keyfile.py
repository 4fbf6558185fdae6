"""Server-held random keys in files (the secrets key, the registry token key).

Several servers may share a data directory and start at the same moment, so a key is
created whole or not at all: written and synced under a temporary name, then linked
into place, which fails if another process got there first; its key is then the key.
A reader never sees an empty or half-written key file.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path


def read_or_create(path: Path, size: int) -> bytes:
    """The bytes at ``path``, or ``size`` fresh random bytes stored there (0600).

    The caller checks the length of what it gets back (a damaged file is its error).
    """
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = secrets.token_bytes(size)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(fresh)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:  # another process won the race: its key is the key
            return path.read_bytes()
        return fresh
    finally:
        os.unlink(temporary)
