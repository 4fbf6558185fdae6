"""nginx's access log of what it answered itself, counted into the app's metrics.

nginx sends one syslog datagram per request it answered without the app (format
``nixfarm`` in nginx.py) to a Unix socket the app listens on. ``static`` lines are
requests nginx answered alone (counted like the app's own: route, method, status,
latency, bytes, narinfo hits); ``accel`` lines are files the app handed to nginx with
X-Accel-Redirect: the app observed the latency and left the rest to this line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path

from nixfarm.server.metrics import Metrics, route_label

log = logging.getLogger(__name__)

_LINE = re.compile(
    r"(?P<kind>static|accel) (?P<method>[A-Z]+) (?P<status>\d{3}) (?P<bytes>\d+) "
    r"(?P<seconds>[\d.]+) (?P<uri>\S+)$")
_SMALL = 64 << 10
_NARINFO = re.compile(r"^/cache/(?P<cache>[^/]+)/[^/]+\.narinfo$")


def count(metrics: Metrics, datagram: bytes) -> None:
    """Account one log line (a syslog datagram: ``<PRI>date tag: message``)."""
    text = datagram.decode("utf-8", "replace").rstrip("\n")
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


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def datagram_received(self, data: bytes, addr: object) -> None:
        count(self.metrics, data)


@contextlib.asynccontextmanager
async def receiving(path: Path, metrics: Metrics) -> AsyncIterator[bool]:
    """Count nginx's lines while the block runs; yields False if another worker of this
    server already listens (each line must be counted once)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        with contextlib.suppress(FileNotFoundError):
            if not _listened(path):
                os.unlink(path)
        try:
            sock.bind(str(path))
        except OSError:
            sock.close()
            yield False
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        os.chmod(path, 0o600)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(metrics), sock=sock)
        try:
            yield True
        finally:
            transport.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    except BaseException:
        sock.close()
        raise


def _listened(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()
