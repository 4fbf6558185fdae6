"""Where a runner keeps image roots and job files.

Sandboxes run as an unprivileged host user (nobody, when the runner is root), which
must be able to reach the image roots: every directory above them must be
searchable by others. A data dir under ``/root`` (mode 0700) is not, so then the
runner works under ``/var/tmp`` instead, in a directory named after the preferred one.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path


def _searchable(path: Path) -> bool:
    for directory in [path, *path.parents]:
        try:
            mode = directory.stat().st_mode
        except FileNotFoundError:
            continue
        if not mode & stat.S_IXOTH:
            return False
    return True


def runner_dir(preferred: Path) -> Path:
    """``preferred`` (created 0755) if sandboxes can reach it, else a place they can."""
    preferred = preferred.resolve()
    if not _searchable(preferred.parent):
        digest = hashlib.sha256(str(preferred).encode()).hexdigest()[:12]
        preferred = Path(tempfile.gettempdir() if os.getuid() else "/var/tmp") / (
            f"nixfarm-runner-{digest}")
    preferred.mkdir(parents=True, exist_ok=True)
    preferred.chmod(0o755)
    return preferred
