"""The one rule the home page and /runners judge a runner's liveness by, and the one
writer of sizes the pages and the CLI use."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from nixfarm.server.pages.runners import ONLINE, liveness
from nixfarm.sizes import describe_size
from nixfarm.wire.runners import RunnerOut

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def _runner(silent: timedelta, lease: float = 60) -> RunnerOut:
    return RunnerOut(id=1, name="r", arch="x86_64-linux", images=["nix"], sandboxes=["bwrap"],
                     slots=1, lease_seconds=lease, heartbeat_wait=lease / 3,
                     last_seen_at=NOW - silent)


def test_liveness() -> None:
    assert liveness(_runner(timedelta(seconds=5)), 0, NOW) == "idle"
    assert liveness(_runner(ONLINE - timedelta(seconds=1)), 0, NOW) == "idle"
    assert liveness(_runner(ONLINE), 0, NOW) == "offline"
    # A longer lease holds it online longer: it may be that long between its calls.
    assert liveness(_runner(ONLINE, lease=300), 0, NOW) == "idle"
    assert liveness(_runner(timedelta(seconds=300), lease=300), 0, NOW) == "offline"
    # Running a job: its heartbeats renew the job's lease, not the runner's last-seen.
    assert liveness(_runner(timedelta(hours=1)), 1, NOW) == "busy"


def test_sizes() -> None:
    assert describe_size(0) == "0 B"
    assert describe_size(1023) == "1023 B"
    assert describe_size(1536) == "1.5 KiB"
    assert describe_size(100 * 1024**2) == "100.0 MiB"
    assert describe_size(3 * 1024**4) == "3072.0 GiB"
    assert describe_size(512.6) == "513 B"  # a rate, bytes per second
