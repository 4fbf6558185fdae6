"""Fixtures for the Nix format tests: real derivations built by the real nix.

The probe derivations (fixtures/probe.nix) are built once per session from the static
busybox Debian ships, imported into the store as a directory. Every test gets its own
XDG cache (Nix caches narinfo lookups there) and no substituters, since nothing here
can reach cache.nixos.org.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
NIX_COMMAND = ["--extra-experimental-features", "nix-command"]
OFFLINE = ["--option", "substituters", ""]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def nix_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("NIX_CONFIG", "substituters =")


def nix(*args: str, env: dict[str, str] | None = None) -> str:
    """Run a nix command for test set-up; fail loudly with its stderr."""
    result = subprocess.run(
        list(args), capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


@dataclass(frozen=True)
class Probe:
    """Where the probe package set lives, and how to build from it."""

    busybox_dir: Path
    expression: Path

    def build_args(self, attribute: str, nonce: str = "") -> list[str]:
        return [
            "nix-build", str(self.expression), "--no-out-link", *OFFLINE,
            "--arg", "busybox", str(self.busybox_dir),
            "--argstr", "nonce", nonce, "-A", attribute,
        ]  # fmt: skip

    def build(self, attribute: str, nonce: str = "") -> str:
        return nix(*self.build_args(attribute, nonce)).strip()


@pytest.fixture(scope="session")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Probe:
    root = tmp_path_factory.mktemp("probe")
    bin_dir = root / "busybox" / "bin"
    bin_dir.mkdir(parents=True)
    shutil.copy("/bin/busybox", bin_dir / "busybox")
    (bin_dir / "sh").symlink_to("busybox")
    return Probe(root / "busybox", FIXTURES / "probe.nix")


@pytest.fixture(scope="session")
def probe_top(probe: Probe) -> str:
    """A built store path with executables, symlinks, nested and empty directories."""
    return probe.build("top")


@pytest.fixture
def nonce() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def nix_path_info(probe_top: str) -> Iterator[dict[str, dict[str, object]]]:
    output = nix("nix", *NIX_COMMAND, "path-info", "--json", "--recursive", probe_top)
    yield {entry["path"]: entry for entry in json.loads(output)}
