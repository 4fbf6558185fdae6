"""The debian/bookworm disk image in a real VM: its sanity check and power-off, and a
check that fails when the image does not hold what it must."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from nixfarm import images
from nixfarm.runner import imaging

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_the_debian_image_passes_its_sanity_check_and_powers_off(
    debian_build: Path, debian_recipe: images.Recipe, vm_dir: Path, state_root: Path
) -> None:
    lines: list[str] = []
    await imaging.check(debian_build / images.DISK_FILE, debian_recipe, vm_dir=vm_dir,
                        state_root=state_root, on_line=lines.append)  # fmt: skip
    assert "sanity check passed" in lines, lines
    assert any(line.startswith("bash 5.") for line in lines), lines
    assert lines[-1] == "debian/bookworm powered off", lines
    assert os.listdir(state_root) == []  # the VM left nothing


async def test_a_failing_sanity_check_is_an_error(
    debian_build: Path, debian_recipe: images.Recipe, vm_dir: Path, state_root: Path,
    tmp_path: Path,
) -> None:
    recipe_dir = tmp_path / "recipe"
    shutil.copytree(debian_recipe.directory, recipe_dir)
    # A sanity check that finds the image lacking something.
    functions = (recipe_dir / "functions").read_text()
    (recipe_dir / "functions").write_text(
        functions + '\nsanity_check() { [ -e /etc/no-such-file ] && echo "sanity check passed"; }\n'
    )
    broken = dataclasses.replace(debian_recipe, directory=recipe_dir)
    failed = r"sanity check of debian/bookworm failed \(exit 1\)"
    with pytest.raises(images.ImageError, match=failed):
        await imaging.check(debian_build / images.DISK_FILE, broken, vm_dir=vm_dir,
                            state_root=state_root, on_line=lambda _: None)  # fmt: skip
