"""One farm per data directory: a lock held for as long as the farm runs.

Two farms on one data directory would share its socket, ``server.json`` and nginx's
pid file: the second replaces the first's socket, and on exit deletes what the first
still uses, after which the first answers 502 to everything. So ``nixfarm up`` and
``nixfarm server`` take an exclusive ``flock`` on ``DATA_DIR/farm.lock`` before they
touch anything, and keep the descriptor open across the ``exec`` into the supervisor:
the lock lives exactly as long as the farm's processes, and the kernel drops it however
they end (a SIGKILL included), so a stale lock file never blocks a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from nixfarm.errors import Conflict

LOCK_NAME = "farm.lock"


def hold(data_dir: Path) -> int:
    """Lock ``data_dir`` for this process and those it execs; the descriptor.

    Raises ``Conflict`` naming the other farm's pid when it is locked already."""
    path = data_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = 0
        with contextlib.suppress(OSError, ValueError):
            other = int(os.pread(fd, 32, 0).decode().strip() or 0)
        os.close(fd)
        holder = f" (pid {other})" if other else ""
        raise Conflict(f"another farm{holder} uses {data_dir}; stop it first, or "
                       "start this one with another --data-dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    os.set_inheritable(fd, True)  # kept across the exec into the supervisor
    return fd
