"""Where a runner keeps image roots and job files, and sweeping up after a killed one.

Sandboxes run as an unprivileged host user (nobody, when the runner is root), which
must be able to reach the image roots: every directory above them must be
searchable by others. A data dir under ``/root`` (mode 0700) is not, so then the
runner works under ``/var/tmp`` instead, in a directory named after the preferred one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import tempfile
from pathlib import Path

from nixfarm.runner.sandbox import bwrap
from nixfarm.runner.sandbox.processes import remove_tree

log = logging.getLogger("nixfarm.runner")

#: Where runners work when their preferred directory is out of the sandboxes' reach.
SHADOW_ROOT = Path(tempfile.gettempdir() if os.getuid() else "/var/tmp")
ORIGIN = "origin"


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
    if _searchable(preferred.parent):
        preferred.mkdir(parents=True, exist_ok=True)
        preferred.chmod(0o755)
        return preferred
    digest = hashlib.sha256(str(preferred).encode()).hexdigest()[:12]
    shadow = SHADOW_ROOT / f"nixfarm-runner-{digest}"
    shadow.mkdir(parents=True, exist_ok=True)
    shadow.chmod(0o755)
    # Names the directory it stands for, so whoever removes that one (an operator,
    # a test's clean-up) can find and remove this one too.
    (shadow / ORIGIN).write_text(f"{preferred}\n")
    return shadow


def shadows_of(root: Path) -> list[Path]:
    """The directories ``runner_dir`` made elsewhere for paths under ``root``."""
    root = root.resolve()
    found = []
    for shadow in sorted(SHADOW_ROOT.glob("nixfarm-runner-*")):
        try:
            origin = Path((shadow / ORIGIN).read_text().strip())
        except OSError:
            continue
        if origin == root or root in origin.parents:
            found.append(shadow)
    return found


def sweep(work_root: Path) -> None:
    """Before claiming work: remove what a runner killed outright (SIGKILL, a crash,
    a power cut) left behind: the job directories in ``work_root`` (artifacts on
    their way out) and its sandboxes' processes, cgroups and homes (``bwrap.sweep``).

    One runner per ``work_root``: a job directory there is never another live
    runner's. Sandboxes are judged by their owner's pid, so runners may share /tmp.
    """
    if work_root.is_dir():
        for leftover in sorted(work_root.glob("job-*")):
            log.warning("removing %s, left by a runner that did not stop", leftover)
            remove_tree(leftover)
    for state_dir in bwrap.sweep():
        log.warning("removed sandbox %s, left by a runner that did not stop", state_dir)
