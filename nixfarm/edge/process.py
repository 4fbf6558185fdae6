"""nginx as a child of the farm's supervising process (see nixfarm/supervisor.py).

Only the standard library (and the edge's layout, which needs nothing else): this runs
in the lean, long-lived supervisor.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from nixfarm.edge.layout import EdgeLayout


def die_with_parent() -> None:
    """Ask the kernel for SIGTERM when this process's parent dies: if the supervisor
    is killed outright, nginx must not keep the port, nor a worker run on alone."""
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class NginxProcess:
    """nginx in the foreground, with the configuration ``layout`` places."""

    def __init__(self, binary: str, layout: EdgeLayout) -> None:
        self.binary = binary
        self.layout = layout
        self.process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def start_when_listening(self, app_socket: Path, timeout: float = 60.0) -> None:
        """Start nginx from a thread once the app accepts on ``app_socket`` (so clients
        never meet a 502 while it starts). The thread lives as long as nginx: the
        kernel's parent-death signal is tied to the thread that started it."""
        threading.Thread(target=self._run, args=(app_socket, timeout), daemon=True,
                         name="nginx").start()

    def _run(self, app_socket: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stopping.is_set():
            with contextlib.suppress(OSError), \
                    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.connect(str(app_socket))
                break
            time.sleep(0.05)
        with self._lock:
            if self._stopping.is_set():
                return
            self.process = subprocess.Popen(
                [self.binary, *self.layout.nginx_args()],
                preexec_fn=die_with_parent,
                # Not in the terminal's foreground group: a Ctrl-C is the supervisor's
                # to handle, and nginx stops last, once the workers are done.
                process_group=0,
            )
        self.process.wait()

    def stop(self, grace: float = 5.0) -> None:
        """Stop gracefully (SIGQUIT lets transfers finish), then for good."""
        with self._lock:
            self._stopping.set()
            process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(2)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
