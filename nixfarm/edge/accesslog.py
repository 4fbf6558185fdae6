"""nginx's access log of what it answered itself, counted into the app's metrics.

nginx appends one line (format ``nixfarm`` in nginx.py) per request it answered
without the app, buffered (a write per 64 KiB or per second), to
``DATA_DIR/edge/run/access.log``; one worker of the app follows the file and counts
the lines. ``static`` lines are requests nginx answered alone (counted like the app's
own: route, method, status, latency, bytes, narinfo hits); ``accel`` lines are files the
app handed to nginx with X-Accel-Redirect: the app observed the latency and left the
rest to this line.

The file never grows without bound: past ``ROTATE_BYTES`` the follower renames it, asks
nginx to reopen its logs (SIGUSR1), reads the old file to its end once nginx has moved
on, and deletes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

from nixfarm.edge.layout import EdgeLayout
from nixfarm.metrics import Metrics, route_label

log = logging.getLogger(__name__)

ROTATE_BYTES = 32 << 20
POLL_SECONDS = 0.5
#: How long nginx's workers get to reopen the log (and flush into the old file).
REOPEN_SECONDS = 2.0
_LINE = re.compile(
    r"(?P<kind>static|accel) (?P<method>[A-Z]+) (?P<status>\d{3}) (?P<bytes>\d+) "
    r"(?P<seconds>[\d.]+) (?P<uri>\S+)$")
_SMALL = 64 << 10
_CHUNK = 64 << 10
_NARINFO = re.compile(r"^/cache/(?P<cache>[^/]+)/[^/]+\.narinfo$")


def count(metrics: Metrics, line: bytes) -> None:
    """Account one log line."""
    text = line.decode("utf-8", "replace").rstrip("\n")
    match = _LINE.search(text)
    if match is None:
        log.debug("edge: unexpected access log line %r", text)
        return
    path = match["uri"].split("?", 1)[0]
    route = route_label(path)
    size = int(match["bytes"])
    status = match["status"]
    metrics.bytes_served.labels(route).inc(size)
    metrics.requests.labels(route, match["method"], status).inc()
    if match["kind"] == "accel":
        return  # the app observed its latency when it handed the file over
    if size <= _SMALL:
        # The latency histogram is the time to the start of the answer; nginx's
        # request time of a large file is its whole transfer, so only small answers
        # are observed.
        metrics.latency.labels(route).observe(float(match["seconds"]))
    narinfo = _NARINFO.match(path)
    if narinfo is not None and status == "200":
        metrics.cache_lookups.labels(narinfo["cache"], "hit").inc()


class LogFollower:
    """Reads complete lines appended to the access log since the last read."""

    def __init__(self, layout: EdgeLayout, metrics: Metrics) -> None:
        self.layout = layout
        self.metrics = metrics
        self._offset = 0
        self._partial = b""

    def read(self, path: Path | None = None) -> None:
        path = path or self.layout.access_log
        try:
            with path.open("rb") as f:
                if os.fstat(f.fileno()).st_size < self._offset:
                    self._offset = 0  # replaced by someone else: start over
                f.seek(self._offset)
                # In bounded chunks: under load megabytes arrive between two polls,
                # and the server's memory must stay flat.
                while data := f.read(_CHUNK):
                    self._offset += len(data)
                    lines = (self._partial + data).split(b"\n")
                    self._partial = lines.pop()
                    for line in lines:
                        count(self.metrics, line)
        except FileNotFoundError:
            return

    async def rotate_if_large(self) -> None:
        current = self.layout.access_log
        try:
            if current.stat().st_size < ROTATE_BYTES:
                return
        except FileNotFoundError:
            return
        old = current.with_suffix(".log.old")
        current.rename(old)
        self.layout.signal_nginx(signal.SIGUSR1, "ask nginx to reopen its log")
        # Workers reopen at once and flush their buffers into the old file as they do;
        # give them a moment, then read the old file to its end.
        await asyncio.sleep(REOPEN_SECONDS)
        await asyncio.to_thread(self.read, old)
        if self._partial:
            count(self.metrics, self._partial)
        self._offset, self._partial = 0, b""
        old.unlink(missing_ok=True)


@contextlib.asynccontextmanager
async def following(layout: EdgeLayout, metrics: Metrics) -> AsyncIterator[bool]:
    """Count nginx's lines while the block runs; yields False when another worker of
    this server already does (each line must be counted once)."""
    # Held for the block's lifetime; opening a lock file does not block.
    lock = open(layout.access_lock, "a")  # noqa: ASYNC230, SIM115
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        follower = LogFollower(layout, metrics)

        async def follow() -> None:
            while True:
                await asyncio.sleep(POLL_SECONDS)
                try:
                    # In a thread: under load a poll may parse thousands of lines.
                    await asyncio.to_thread(follower.read)
                    await follower.rotate_if_large()
                except OSError as e:
                    log.warning("edge: reading nginx's access log failed: %s", e)

        task = asyncio.create_task(follow())
        try:
            yield True
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            follower.read()
    finally:
        lock.close()
