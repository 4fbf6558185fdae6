"""Files of the data directory that more than one process reads.

``nixfarm up`` writes the tokens (``bootstrap``) before the server starts; the runner
inside the server and local clients read them. Each is private to the farm's user.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The admin token ``nixfarm up`` keeps working (read by ``--data-dir`` clients).
ADMIN_TOKEN = "admin.token"
#: The token of the runner ``nixfarm up`` runs inside the server.
RUNNER_TOKEN = "runner.token"


def read_token(path: Path) -> str:
    """The token in ``path``, or "" when there is none (a small local file: read inline)."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, readable by this user only (mode 0600)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
