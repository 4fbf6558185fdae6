"""Who may read the farm's files: the farm, and its nginx workers for what they serve.

The data directory holds the database, the admin token, the object store (logs,
artifacts, NARs) and the edge's tree. It is the gate: mode 0700, or, when nginx is in
front of a farm run as root, 0710 with the group of ``nixfarm-www`` (the unprivileged
user nginx's workers run as, made by scripts/setup): they may pass through it to what
they serve, but not list it. The files directly in it (the database, the admin token)
are 0600 whatever else holds. A filesystem object store outside the data directory is
gated the same way. The edge's run directory is setgid ``nixfarm-www``, so the app's
socket made in it (mode 0660) is the workers' to connect to.

Without that user, when a directory above the data directory is closed to it, or
when not root, nginx's workers run as the farm's own user and the gate is 0700: no
one else gets in.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import stat
from pathlib import Path

log = logging.getLogger("nixfarm")

#: The user nginx's workers run as when the farm runs as root.
WWW_USER = "nixfarm-www"


def _reachable(path: Path) -> bool:
    """Whether anyone may pass every directory above ``path``."""
    return all(p.stat().st_mode & stat.S_IXOTH for p in path.resolve().parents)


def www_user(data_dir: Path) -> tuple[str, str, int] | None:
    """(user, group, gid) for nginx's workers: when the farm is root, the user exists
    and may reach the data directory (a directory above it closed to others, as a
    test's temporary directory is, leaves the workers the farm's own user)."""
    if os.geteuid() != 0:
        return None
    try:
        user = pwd.getpwnam(WWW_USER)
    except KeyError:
        return None
    if not _reachable(data_dir):
        return None
    return user.pw_name, grp.getgrgid(user.pw_gid).gr_name, user.pw_gid


def _gate(directory: Path, gid: int | None) -> None:
    if gid is None:
        directory.chmod(0o700)
    else:
        os.chown(directory, -1, gid)
        directory.chmod(0o710)


def protect(data_dir: Path, store_root: Path | None, edge_run: Path | None) -> None:
    """Apply the module's rules (idempotent); ``edge_run`` when nginx is in front."""
    www = www_user(data_dir) if edge_run is not None else None
    if edge_run is not None and www is None and os.geteuid() == 0:
        log.warning("nginx's workers run as root: no user %s (scripts/setup makes it), or "
                    "a directory above %s is closed to it", WWW_USER, data_dir)
    gid = www[2] if www is not None else None
    _gate(data_dir, gid)
    for entry in data_dir.iterdir():
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISREG(entry.lstat().st_mode):
                entry.chmod(0o600)
    if store_root is not None and not store_root.resolve().is_relative_to(data_dir.resolve()):
        store_root.mkdir(parents=True, exist_ok=True)
        _gate(store_root, gid)
        if gid is not None:
            store_root.chmod(0o750)  # nginx reads what the app hands it over
    if edge_run is not None:
        if gid is not None:
            os.chown(edge_run, -1, gid)
            edge_run.chmod(0o2750)
        else:
            edge_run.chmod(0o700)
