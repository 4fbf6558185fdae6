"""Fixtures of the VM tests: the guest kernel (fetched once, kept between runs) and
one event loop per module, so that a module boots one VM and shares it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def runner_home() -> Path:
    """A runner directory kept between runs (the kernel is ~27 MB from Debian's
    registry), reachable by the unprivileged user qemu runs as."""
    path = Path(tempfile.gettempdir()) / f"nixfarm-test-vm-{os.getuid()}"
    path.mkdir(mode=0o755, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def vm_dir(runner_home: Path) -> Path:
    return runner_home / "vm"


@pytest.fixture(scope="session")
def state_root() -> Path:
    path = Path(tempfile.mkdtemp(prefix="nixfarm-test-vm-state-"))
    path.chmod(0o755)
    return path
