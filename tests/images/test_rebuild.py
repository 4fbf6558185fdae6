"""Images rebuild themselves: a distro's build.yml becomes the manifest of the job that
builds its image, carrying this farm's recipe (no VM, no job here: the manifest and
its recipe task; tests/e2e/test_image_rebuild.py runs such a job from a schedule)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from nixfarm import images
from nixfarm.images import rebuild
from nixfarm.manifest.loading import load_manifest
from tests.fixtures.farm import NIXFARM


@pytest.mark.parametrize("name", ["debian/bookworm", "debian/stable"])
def test_the_debian_build_yml_becomes_a_manifest_that_builds_the_image(
        name: str, tmp_path: Path) -> None:
    recipe = images.find(images.RECIPES, name)
    text = rebuild.manifest(recipe)
    manifest = load_manifest(text, name="build.yml")
    assert manifest.image == "debian/bookworm"
    assert {"debootstrap", "e2fsprogs", "qemu-utils"} <= set(manifest.packages)
    assert manifest.environment["release"] == "bookworm"
    assert manifest.environment["arch"] == "x86_64"
    assert [t.name for t in manifest.tasks] == ["recipe", "genimg", "check"]
    assert manifest.artifacts == ["out/root.img.qcow2", "out/recipe.sha256"]
    assert "# Rebuilds a Debian image" in text  # the build.yml's comments stay
    assert text == rebuild.manifest(recipe)  # one recipe, one manifest
    # The recipe task, run by a shell as the job's would, unpacks exactly this recipe.
    home = tmp_path / "home"
    home.mkdir()
    done = subprocess.run(["sh", "-ec", manifest.tasks[0].script], cwd=home, text=True,
                          capture_output=True, env={"HOME": str(home), "PATH": os.defpath})
    assert done.returncode == 0, done.stderr
    unpacked = home / "recipe"
    real = images.find(images.RECIPES, "debian/bookworm")
    assert sorted(p.name for p in unpacked.iterdir()) == ["functions", "genimg", "image.toml",
                                                          "recipe.sha256"]
    assert (unpacked / "genimg").read_bytes() == (images.RECIPES / "debian/genimg").read_bytes()
    assert os.access(unpacked / "genimg", os.X_OK)
    for file in ("functions", "image.toml"):
        assert (unpacked / file).read_bytes() == (real.directory / file).read_bytes()
    assert (unpacked / "recipe.sha256").read_text() == images.recipe_hash(recipe) + "\n"
    assert images.recipe_hash(recipe) == images.recipe_hash(real)


def test_only_disk_images_with_a_build_yml_have_a_build_job() -> None:
    for name in ("alpine/edge", "demo/latest", "nix/base"):
        with pytest.raises(images.ImageError, match=r"has no build\.yml"):
            rebuild.manifest(images.find(images.RECIPES, name))


def test_the_cli_prints_it() -> None:
    done = subprocess.run([NIXFARM, "image", "manifest", "debian/stable"], text=True,
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == rebuild.manifest(images.find(images.RECIPES, "debian/stable"))
    done = subprocess.run([NIXFARM, "image", "manifest", "alpine/edge"], text=True,
                          capture_output=True, timeout=120)
    assert done.returncode == 2 and "alpine/edge has no build.yml" in done.stderr
