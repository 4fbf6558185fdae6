"""The image catalogue's files: recipes, aliases, hashes, installing into a runner's
catalogue, and which images a runner offers for its sandbox kinds (no VM here)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from nixfarm import images
from nixfarm.errors import NotFound
from nixfarm.manifest import ManifestError
from nixfarm.manifest.loading import check_supported, load_manifest
from nixfarm.runner.roots import Catalogue, Images

FUNCTIONS = ("boot", "install", "add_repository", "sanity_check")


def test_recipes_follow_the_builds_sr_ht_layout() -> None:
    recipes = {r.name: r for r in images.read(images.RECIPES)}
    assert {
        "debian/bookworm",
        "debian/stable",
        "alpine/edge",
        "archlinux/latest",
        "nixos/unstable",
        "freebsd/14.x",
        "demo/latest",
    } <= set(recipes)
    assert recipes["debian/stable"].alias_of == "debian/bookworm"
    assert recipes["debian/stable"].release == "bookworm"
    assert recipes["debian/bookworm"].alias_of == ""
    assert recipes["debian/bookworm"].kind == "disk"
    assert recipes["debian/bookworm"].sandboxes == ("vm",)
    assert recipes["demo/latest"].sandboxes == ("bwrap", "vm")
    assert recipes["nix/base"].kind == "nix" and recipes["nix/base"].genimg is None
    assert recipes["nix/base"].packages == ("bashInteractive", "coreutils")
    for recipe in recipes.values():
        if recipe.kind != "nix":  # a Nix image is composed by the runner
            assert recipe.genimg is not None and os.access(recipe.genimg, os.X_OK), recipe
        if recipe.kind == "disk":
            # Every disk image's functions file defines the functions and poweroff_cmd.
            assert recipe.functions is not None, recipe
            script = (
                '. "$0"; for f in '
                + " ".join(FUNCTIONS)
                + '; do command -v "$f" >/dev/null || echo "missing $f"; done; '
                '[ -n "$poweroff_cmd" ] || echo "missing poweroff_cmd"'
            )
            done = subprocess.run(
                ["sh", "-c", script, str(recipe.functions)],
                capture_output=True,
                text=True,
                check=True,
            )
            assert done.stdout == "", (recipe.name, done.stdout)


def copy_recipe(tmp_path: Path) -> images.Recipe:
    """debian/bookworm (with its alias) as a catalogue of its own under tmp_path."""
    recipes = tmp_path / "recipes"
    shutil.copytree(images.RECIPES / "debian", recipes / "debian", symlinks=True)
    return images.find(recipes, "debian/bookworm")


def test_the_recipe_hash_follows_every_file_of_the_recipe(tmp_path: Path) -> None:
    recipe = copy_recipe(tmp_path)
    before = images.recipe_hash(recipe)
    assert images.recipe_hash(recipe) == before
    alias = images.find(recipe.directory.parents[2], "debian/stable")
    assert images.recipe_hash(alias) == before  # an alias is the same image
    (recipe.directory / "functions").write_text("install() { :; }\n")
    changed = images.recipe_hash(recipe)
    assert changed != before
    genimg = recipe.directory.parents[1] / "genimg"  # the distro's genimg counts too
    genimg.write_text(genimg.read_text() + "\n# changed\n")
    assert images.recipe_hash(recipe) not in (before, changed)


def fake_build(where: Path, content: bytes) -> Path:
    where.mkdir(parents=True)
    (where / images.DISK_FILE).write_bytes(content)
    (where / images.HASH_FILE).write_text(where.name + "\n")
    return where


def test_install_swaps_the_image_atomically_with_its_aliases(tmp_path: Path) -> None:
    recipe = images.find(images.RECIPES, "debian/bookworm")
    catalogue = tmp_path / "catalogue"
    first = fake_build(tmp_path / "build-1", b"first disk")
    place = images.install(first, recipe, catalogue)
    assert place == catalogue / "debian/bookworm/x86_64" and place.is_symlink()
    assert (place / images.DISK_FILE).read_bytes() == b"first disk"
    assert (place / "functions").read_bytes() == (recipe.directory / "functions").read_bytes()
    assert os.readlink(catalogue / "debian/stable") == "bookworm"
    installed = {r.name: r for r in images.read(catalogue)}
    assert installed["debian/stable"].alias_of == "debian/bookworm"
    assert installed["debian/stable"].disk == catalogue / "debian/stable/x86_64" / images.DISK_FILE
    old_target = place.resolve()

    second = fake_build(tmp_path / "build-2", b"second disk")
    images.install(second, recipe, catalogue)
    assert (place / images.DISK_FILE).read_bytes() == b"second disk"
    assert not old_target.exists()  # the replaced build is gone
    assert sorted(p.name for p in (catalogue / images.BUILDS).iterdir()) == [place.resolve().name]
    # Nothing but symlinks and the builds: no temporary names left behind.
    assert sorted(p.name for p in (catalogue / "debian").iterdir()) == ["bookworm", "stable"]

    with pytest.raises(images.ImageError, match="build the image first"):
        images.install(tmp_path / "nothing-built", recipe, catalogue)


def test_a_runner_offers_disk_images_only_with_a_vm(tmp_path: Path) -> None:
    built = tmp_path / "runner-images"
    offered = Images(Catalogue(built))
    assert "debian/bookworm" not in offered.names()
    with pytest.raises(NotFound, match="nixfarm image install debian/bookworm"):
        offered.catalogue.find("debian/bookworm")
    recipe = images.find(images.RECIPES, "debian/bookworm")
    images.install(fake_build(tmp_path / "build", b"disk"), recipe, built)
    assert {"debian/bookworm", "debian/stable", "demo/latest"} <= offered.names(("vm",))
    assert offered.names(("bwrap",)) == {"demo/latest"}  # nix/*: no Nix package source
    with_nix = Images(Catalogue(built), nix_source=tmp_path)
    assert with_nix.names(("bwrap",)) == {"demo/latest", "nix", "nix/base"}
    assert with_nix.composes("nix/base") and not with_nix.composes("debian/bookworm")
    assert offered.catalogue.find("debian/stable").disk is not None


def test_submit_refuses_a_catalogue_image_no_runner_has_saying_how_to_get_it() -> None:
    manifest = load_manifest("image: debian/stable\ntasks:\n  - a: echo\n")
    with pytest.raises(ManifestError) as refused:
        check_supported(manifest, {"nix", "demo/latest"}, {"x86_64"})
    assert (
        "image 'debian/stable' is not available on this server (no runner has it "
        "installed; it has a recipe: on a runner with the vm sandbox, `nixfarm image "
        "build debian/stable && nixfarm image install debian/stable`"
    ) in str(refused.value)
    check_supported(manifest, {"debian/stable"}, {"x86_64"})  # offered: accepted
