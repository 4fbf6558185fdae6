"""The process that runs for as long as the farm does: Granian's supervisor, and nginx.

``nixfarm up`` validates the configuration, prepares the data directory and renders
nginx's configuration, then replaces itself (``exec``, same process id) with
``python -m nixfarm.supervisor``. This module imports only Granian and the edge's
process handling, so the long-lived supervising process does not keep the CLI's
libraries (typer, rich, httpx, pydantic's models) in memory: about 25 MB less.
Everything it needs comes in the environment from the command that prepared it.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The environment variable carrying the supervisor's instructions (JSON).
PLAN_VARIABLE = "_NIXFARM_SUPERVISOR"


def main() -> None:
    import json

    from granian import Granian
    from granian.constants import Interfaces

    plan = json.loads(os.environ.pop(PLAN_VARIABLE))
    edge = None
    where: dict[str, object] = {"address": plan["host"], "port": plan["port"]}
    if plan.get("nginx"):
        from nixfarm.edge.layout import EdgeLayout
        from nixfarm.edge.process import NginxProcess

        layout = EdgeLayout(Path(plan["edge_root"]))
        edge = NginxProcess(plan["nginx"], layout)
        socket_path = layout.app_socket
        socket_path.unlink(missing_ok=True)
        # 0660: the run directory is setgid nixfarm-www, nginx's workers (hardening.py).
        where = {"uds": socket_path, "uds_permissions": 0o660}
        edge.start_when_listening(socket_path)
    try:
        Granian(
            "nixfarm.server.app:from_environment",
            **where,  # type: ignore[arg-type]
            interface=Interfaces.ASGI,
            factory=True,
            workers=plan["workers"],
            # Rust I/O threads, which send files (pathsend) without Python: one per
            # core serves NARs and layers 25-40% faster here than Granian's default of 1.
            runtime_threads=max(1, min(os.cpu_count() or 1, 4)),
            log_access=False,
        ).serve()
    finally:
        if edge is not None:
            edge.stop()
        Path(plan["announce"]).unlink(missing_ok=True)  # local clients: the farm stopped


if __name__ == "__main__":
    main()
