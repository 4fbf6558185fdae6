"""How a worker of the farm is told to wind down, and says it has (see supervisor.py).

Its own small module because both sides use it: the supervisor sends DRAIN_SIGNAL and
waits for the byte; the embedded runner, deep inside a worker, catches the signal and
reports. The runner must not import the supervisor (it sits above the runner).
"""

from __future__ import annotations

import contextlib
import os
import signal

#: What the supervisor sends a worker to have its runner stop.
DRAIN_SIGNAL = signal.SIGUSR1

#: In a worker: the write end of the supervisor's "drained" pipe, until used.
_drained_fd: int | None = None


def set_drained_pipe(fd: int) -> None:
    """In a worker, once: where ``report_drained`` writes."""
    global _drained_fd
    _drained_fd = fd


def report_drained() -> None:
    """In a worker: tell the supervisor this worker has nothing left to finish. Once;
    a no-op in a process the supervisor did not start."""
    global _drained_fd
    fd, _drained_fd = _drained_fd, None
    if fd is not None:
        with contextlib.suppress(OSError):
            os.write(fd, b".")
            os.close(fd)
