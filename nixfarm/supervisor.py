"""The process that runs for as long as the farm does: Granian's supervisor, and nginx.

``nixfarm up`` validates the configuration, prepares the data directory and renders
nginx's configuration, then replaces itself (``exec``, same process id) with
``python -m nixfarm.supervisor``. This module imports only Granian and the edge's
process handling, so the long-lived supervising process does not keep the CLI's
libraries (typer, rich, httpx, pydantic's models) in memory: about 25 MB less.
Everything it needs comes in the environment from the command that prepared it.

Stopping. Left to itself, Granian stops its workers at the first SIGINT or SIGTERM,
which cuts running jobs off mid-log; and in a terminal, Ctrl-C reaches every process
of the farm at once. So the supervisor takes both signals over::

    1st SIGINT/SIGTERM ─► each worker: DRAIN_SIGNAL ─► its embedded runner claims no
        more jobs, gives the running ones jobs.shutdown_grace_seconds, interrupts the
        rest and reports them while the server still answers ─► the worker writes to
        the "drained" pipe (at once when it runs no runner)
    all drained, or grace + DRAIN_MARGIN passed ─► Granian stops the workers (killed
        after WORKER_KILL_AFTER s) ─► nginx stops ─► what is left of the farm is killed
    2nd signal ─► every process of the farm is killed; exit at once

Workers and nginx run in process groups of their own, so a terminal's Ctrl-C (sent to
its foreground group) reaches only the supervisor. Each worker watches a pipe whose
write end only the supervisor holds: end-of-file means the supervisor is gone, even
killed with SIGKILL, and the worker kills everything it started and exits. While
the farm stops, the supervisor keeps noting the processes under it: what a worker
killed for lingering leaves behind (re-parented away from us) is killed at the end.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from nixfarm.draining import DRAIN_SIGNAL, report_drained, set_drained_pipe

#: The environment variable carrying the supervisor's instructions (JSON).
PLAN_VARIABLE = "_NIXFARM_SUPERVISOR"
#: Seconds beyond the jobs' grace that interrupted jobs get to be reported.
DRAIN_MARGIN = 5.0
#: Seconds a drained worker gets to stop before it is killed.
WORKER_KILL_AFTER = 5
#: Seconds nginx gets to finish its transfers once the workers are gone.
NGINX_GRACE = 2.0


def descendants(pid: int) -> dict[int, bytes]:
    """The living processes under ``pid``, each with its start time (which tells it
    from a later process given the same pid), from /proc."""
    children: dict[int, list[tuple[int, bytes]]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if fields[0] != b"Z":  # a zombie is dead already; its parent reaps it
            children.setdefault(int(fields[1]), []).append((int(entry.name), fields[19]))
    found: dict[int, bytes] = {}
    todo = [pid]
    while todo:
        for child, started in children.get(todo.pop(), ()):
            found[child] = started
            todo.append(child)
    return found


def _started(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def kill_descendants(pid: int, also: dict[int, bytes] | None = None) -> None:
    """SIGKILL every process under ``pid``, and those of ``also`` still alive (a few
    passes: some may fork meanwhile)."""
    for attempt in range(5):
        found = descendants(pid)
        if attempt == 0 and also:
            found.update((p, t) for p, t in also.items() if _started(p) == t)
        if not found:
            return
        for child in found:
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGKILL)
        time.sleep(0.05)


class _Pipes:
    """The pipes between the supervisor and its workers (inherited through fork)."""

    def __init__(self) -> None:
        #: Its write end stays in the supervisor alone: EOF means it is gone.
        self.alive_read, self.alive_write = os.pipe()
        #: Each worker writes one byte when drained.
        self.drained_read, self.drained_write = os.pipe()


def _in_worker(pipes: _Pipes) -> None:
    """Run in each worker right after Granian forks it (see the module doc)."""
    os.setpgid(0, 0)  # out of the terminal's foreground group: Ctrl-C is not for us
    os.close(pipes.alive_write)
    os.close(pipes.drained_read)
    set_drained_pipe(pipes.drained_write)
    # Without a runner to stop (nixfarm server), a worker is drained at once; the
    # embedded runner puts its own handler in place of this one.
    signal.signal(DRAIN_SIGNAL, lambda signum, frame: report_drained())
    threading.Thread(target=_watch_supervisor, args=(pipes.alive_read,), daemon=True,
                     name="supervisor-watch").start()


def _watch_supervisor(fd: int) -> None:
    with contextlib.suppress(OSError):
        while os.read(fd, 64):
            pass
    # The supervisor is gone (killed): nothing of the farm may run on without it.
    kill_descendants(os.getpid())
    os._exit(1)


def _say(text: str) -> None:
    print(f"nixfarm: {text}", file=sys.stderr, flush=True)


class _Stopper:
    """The supervisor's SIGINT and SIGTERM (see the module doc)."""

    def __init__(self, server: Any, pipes: _Pipes, grace: float, announce: Path) -> None:
        self.server = server
        self.pipes = pipes
        self.grace = grace
        self.announce = announce
        self.stopping = False
        #: The processes seen under the supervisor since the farm began to stop.
        self.seen: dict[int, bytes] = {}

    def take_signals(self) -> None:
        # Granian's startup hook: after Granian installed its own handlers.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._signal)

    def _signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            self._now(signum)
        self.stopping = True
        _say(f"stopping; running jobs get up to {self.grace:g} s to end "
             "(signal again to stop at once)")
        threading.Thread(target=self._drain, daemon=True, name="drain").start()

    def _drain(self) -> None:
        workers = [w.inner.pid for w in self.server.wrks if w.is_alive()]
        for pid in workers:
            with contextlib.suppress(OSError):
                os.kill(pid, DRAIN_SIGNAL)
        deadline = time.monotonic() + self.grace + DRAIN_MARGIN
        drained = 0
        while drained < len(workers) and (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.pipes.drained_read], [], [], left)
            if ready:
                drained += len(os.read(self.pipes.drained_read, 64))
        self.server.signal_handler_interrupt()  # Granian stops the workers now
        while True:  # until the process exits: see the module doc
            self.seen.update(descendants(os.getpid()))
            time.sleep(0.2)

    def _now(self, signum: int) -> None:
        _say("stopping at once")
        kill_descendants(os.getpid())
        self.announce.unlink(missing_ok=True)
        os._exit(128 + signum)


def main() -> None:
    import json
    import multiprocessing.util

    from granian import Granian
    from granian.constants import Interfaces

    plan = json.loads(os.environ.pop(PLAN_VARIABLE))
    pipes = _Pipes()
    multiprocessing.util.register_after_fork(pipes, _in_worker)
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
    announce = Path(plan["announce"])
    stopper: _Stopper | None = None
    try:
        server = Granian(
            "nixfarm.server.app:from_environment",
            **where,  # type: ignore[arg-type]
            interface=Interfaces.ASGI,
            factory=True,
            workers=plan["workers"],
            # Rust I/O threads, which send files (pathsend) without Python: one per
            # core serves NARs and layers 25-40% faster here than Granian's default of 1.
            runtime_threads=max(1, min(os.cpu_count() or 1, 4)),
            log_access=False,
            workers_kill_timeout=WORKER_KILL_AFTER,
        )
        stopper = _Stopper(server, pipes, float(plan.get("grace", 0.0)), announce)
        stopper.take_signals()  # a signal while Granian starts: it stops once started
        server.on_startup(stopper.take_signals)  # again: Granian's startup takes them
        server.serve()
    finally:
        if edge is not None:
            edge.stop(NGINX_GRACE)
        # A copy: the drain thread may still be adding to it.
        kill_descendants(os.getpid(), dict(stopper.seen) if stopper is not None else None)
        announce.unlink(missing_ok=True)  # local clients: the farm stopped


if __name__ == "__main__":
    # Run as nixfarm.supervisor, not __main__: one copy of this module's globals for
    # the workers' hooks and the code they call.
    from nixfarm import supervisor

    supervisor.main()
