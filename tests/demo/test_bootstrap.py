"""How the host's busybox gets into the store (bootstrap.nix)."""

import shutil
import subprocess
from pathlib import Path

from tests.demo import nixcli


def busybox_path(binary: Path) -> subprocess.CompletedProcess[str]:
    """Evaluate the busybox package's store path for a given binary."""
    expression = f"(import {nixcli.DEMO} {{ busybox = {binary}; }}).busybox.outPath"
    return nixcli.run("nix-instantiate", "--eval", "--json", "--expr", expression)


def test_the_import_depends_only_on_the_binary(tmp_path: Path) -> None:
    # The same bytes under the same file name give the same packages wherever they live,
    # so farms on different hosts agree on store paths.
    copy = tmp_path / "busybox"
    shutil.copy(shutil.which("busybox") or "/bin/busybox", copy)
    default = busybox_path(Path("/bin/busybox"))
    moved = busybox_path(copy)
    assert default.returncode == moved.returncode == 0, default.stderr + moved.stderr
    assert default.stdout == moved.stdout


def test_a_binary_not_named_busybox_is_refused_clearly(tmp_path: Path) -> None:
    copy = tmp_path / "bb"
    shutil.copy("/bin/busybox", copy)
    done = busybox_path(copy)
    assert done.returncode != 0
    assert "file name must start with 'busybox'" in done.stderr
