"""A job's memory limit holds: a sandbox limited to 64 MiB that asks for 256 MiB is
killed by the kernel's OOM killer in its own group, the host untouched, and the sandbox
still runs the next command.

Small on purpose: the machine is shared, so the test never lets anything grow far past
64 MiB (the group's peak is checked too)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nixfarm.runner.sandbox import BwrapSandbox, SandboxSpec
from tests.runner.conftest import anyio_backend, built_images, demo_root, images

pytestmark = pytest.mark.anyio
__all__ = ["anyio_backend", "built_images", "demo_root", "images"]

LIMIT = 64 * 1024**2


def _memory_group(groups: list[Path]) -> Path:
    for group in groups:
        if (group / "memory.max").exists() or (group / "memory.limit_in_bytes").exists():
            return group
    raise AssertionError(f"no memory group among {groups}")


def _oom_kills(group: Path) -> int:
    # cgroup v2: memory.events; v1: memory.oom_control (both have an "oom_kill N" line).
    name = "memory.events" if (group / "memory.events").exists() else "memory.oom_control"
    for line in (group / name).read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    raise AssertionError(f"no oom_kill in {group / name}")


def _peak(group: Path) -> int:
    for name in ("memory.peak", "memory.max_usage_in_bytes"):
        if (group / name).exists():
            return int((group / name).read_text())
    raise AssertionError(f"no peak usage in {group}")


async def test_a_sandbox_asking_for_256_mib_under_a_64_mib_limit_is_killed(
        demo_root: Path) -> None:
    async with BwrapSandbox(SandboxSpec(rootfs=demo_root, memory_limit=LIMIT)) as box:
        assert box.confinement is not None
        group = _memory_group(box.confinement.groups)
        assert _oom_kills(group) == 0
        lines: list[str] = []
        # The shell itself holds the 256 MiB string (no swap: memory.swap.max is 0).
        status = await box.run(
            ["/bin/sh", "-c", 'x=$(head -c 268435456 /dev/zero | tr "\\0" a); echo ${#x}'],
            lines.append, timeout=60)
        assert status != 0 and "268435456" not in lines, (status, lines)
        assert _oom_kills(group) >= 1, "not stopped by the memory limit"
        # Never allowed past the limit, so the host never saw the 256 MiB.
        assert _peak(group) <= LIMIT, _peak(group)
        # The OOM kill stayed in the sandbox's group: the sandbox itself runs on.
        after: list[str] = []
        assert await box.run(["/bin/sh", "-c", "echo alive"], after.append) == 0
        assert after == ["alive"]
