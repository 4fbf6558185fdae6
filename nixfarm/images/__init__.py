"""The image catalogue: recipes in this directory, built images in a runner's.

The layout is builds.sr.ht's (see README.md here and docs/images.md)::

    <distro>/genimg                         builds any release of the distro
    <distro>/<release>/<arch>/image.toml    description, kind, package manager
    <distro>/<release>/<arch>/functions     boot, install, add_repository,
                                            sanity_check, poweroff_cmd (shell)
    <distro>/<alias> -> <release>           an alias (debian/stable -> bookworm)

An image's ``kind`` is ``root`` (its genimg makes a root directory: the runner builds
it on first use, and either sandbox runs it), ``nix`` (a Nix image description: its
``packages``, composed by a runner from its Nix package source like ``image: nix``;
either sandbox) or ``disk`` (``root.img.qcow2``: built ahead with ``nixfarm image
build``, installed into a runner's catalogue with ``nixfarm image install``, and run
only in a virtual machine).

A runner's catalogue (``<runner dir>/images``) has the same layout; each installed
``<distro>/<release>/<arch>`` is a symlink to a directory of ``.builds/`` holding
``root.img.qcow2``, the recipe's ``image.toml`` and ``functions``, and
``recipe.sha256``. Installing swaps that symlink with ``rename``, so a runner (or a
job booting) sees the old image or the new one, never half of either.

This module knows files only; booting an image (``sanity_check``) is the runner's
(``nixfarm.runner.imaging``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from nixfarm.errors import NixfarmError, NotFound

RECIPES = Path(__file__).resolve().parent
DISK_FILE = "root.img.qcow2"
FUNCTIONS = "functions"
HASH_FILE = "recipe.sha256"
BUILDS = ".builds"
#: In a build made by a job (``nixfarm image install --from-job``, a runner installing a
#: scheduled build): "JOB_ID FINISHED_AT" (ISO 8601, UTC), which job built it and when.
BUILD_JOB_FILE = "build-job"
DEFAULT_ARCH = "x86_64"
Kind = Literal["root", "disk", "nix"]
#: The sandboxes each kind of image can run in.
SANDBOXES: dict[str, tuple[str, ...]] = {
    "root": ("bwrap", "vm"),
    "disk": ("vm",),
    "nix": ("bwrap", "vm"),
}


@dataclass
class ImageError(NixfarmError):
    """An image could not be read, built or installed."""


@dataclass(frozen=True)
class Recipe:
    """One image of a catalogue: ``name`` is ``distro/release`` (an alias's own name)."""

    name: str
    arch: str
    directory: Path
    description: str = ""
    package_manager: str = "none"
    kind: Kind = "root"
    #: The name this one is an alias of ("" when it is no alias).
    alias_of: str = ""
    #: A Nix image's packages: attribute names in the farm's Nix package source.
    packages: tuple[str, ...] = ()

    @property
    def distro(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def canonical(self) -> str:
        """The image's own name: an alias's target, else its name."""
        return self.alias_of or self.name

    @property
    def release(self) -> str:
        """The real release (an alias's target)."""
        return self.canonical.split("/", 1)[1]

    @property
    def functions(self) -> Path | None:
        """The image's functions file, if it has one."""
        path = self.directory / FUNCTIONS
        return path if path.is_file() else None

    @property
    def genimg(self) -> Path | None:
        """What builds it: the image's own genimg (``genimg OUT``), else the
        distro's (``genimg OUT RELEASE ARCH``)."""
        for path in (self.directory / "genimg", self.directory.parent.parent / "genimg"):
            if path.is_file():
                return path
        return None

    def genimg_argv(self, genimg: Path, out: Path) -> list[str]:
        """The command that builds it into ``out`` with ``genimg`` (see ``genimg``)."""
        if genimg.parent == self.directory:
            return [str(genimg), str(out)]
        return [str(genimg), str(out), self.release, self.arch]  # the distro's

    def build_name(self, digest: str) -> str:
        """The name of its build of recipe hash ``digest`` (aliases build the real one)."""
        return f"{self.canonical.replace('/', '-')}-{self.arch}-{digest}"

    @property
    def disk(self) -> Path | None:
        """The installed disk image (in a runner's catalogue), if there is one."""
        path = self.directory / DISK_FILE
        return path if path.is_file() else None

    @property
    def sandboxes(self) -> tuple[str, ...]:
        return SANDBOXES[self.kind]


def read(catalogue: Path) -> list[Recipe]:
    """Every image under ``catalogue`` (recipes, or a runner's installed images)."""
    found = []
    for manifest in sorted(catalogue.glob("*/*/*/image.toml")):
        directory = manifest.parent
        release_dir = directory.parent
        if release_dir.name.startswith(".") or release_dir.parent.name.startswith("."):
            continue
        try:
            data = tomllib.loads(manifest.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ImageError(f"Cannot read {manifest}: {e}") from e
        kind = str(data.get("kind", "root"))
        if kind not in SANDBOXES:
            raise ImageError(f"{manifest}: kind must be root, disk or nix, not {kind!r}.")
        packages = data.get("packages", [])
        if kind == "nix" and (not packages or not all(isinstance(p, str) for p in packages)):
            raise ImageError(f"{manifest}: a nix image needs packages, a list of names.")
        distro = release_dir.parent.name
        alias_of = ""
        if release_dir.is_symlink():
            alias_of = f"{distro}/{Path(os.readlink(release_dir)).name}"
        found.append(Recipe(
            name=f"{distro}/{release_dir.name}", arch=directory.name, directory=directory,
            description=str(data.get("description", "")),
            package_manager=str(data.get("package_manager", "none")),
            kind=kind,  # type: ignore[arg-type]  # checked against SANDBOXES above
            alias_of=alias_of, packages=tuple(packages)))  # fmt: skip
    return found


def find(catalogue: Path, name: str, arch: str = DEFAULT_ARCH) -> Recipe:
    for recipe in read(catalogue):
        if recipe.name == name and recipe.arch == arch:
            return recipe
    names = ", ".join(sorted({r.name for r in read(catalogue)})) or "none"
    raise NotFound(f"There is no image {name} for {arch} in {catalogue} (there are: {names}).",
                   kind="image", name=name)  # fmt: skip


def recipe_hash(recipe: Recipe) -> str:
    """A hash of everything that makes the image: its files and the genimg.

    A built image carries it (``recipe.sha256``); when the recipe changes, the hash
    does, and the image is built again."""
    digest = hashlib.sha256()
    files = sorted(p for p in recipe.directory.iterdir() if p.is_file())
    if recipe.genimg is not None and recipe.genimg not in files:
        files.append(recipe.genimg)
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(f"{recipe.release}\0{recipe.arch}".encode())
    return digest.hexdigest()[:32]


def how_to_build(name: str, arch: str = DEFAULT_ARCH) -> str:
    """One sentence saying how a runner gets image ``name``, for refusals."""
    recipes = {r.name: r for r in read(RECIPES) if r.arch == arch}
    recipe = recipes.get(name)
    if recipe is None:
        return ""
    if recipe.kind == "root":
        return "no runner offers it yet; a runner builds it on first use"
    if recipe.kind == "nix":
        return ("no runner offers it: runners compose it from a Nix package source, "
                "`nixfarm runner --nix-source DIR`")
    return (
        f"no runner has it installed; it has a recipe: on a runner with the vm "
        f"sandbox, `nixfarm image build {name} && nixfarm image install {name}` "
        f"(docs/images.md)"
    )


def aliases_of(release_dir: Path) -> list[Path]:
    """The alias symlinks beside ``release_dir`` that point at it."""
    return [p for p in release_dir.parent.iterdir()
            if p.is_symlink() and os.readlink(p) == release_dir.name]  # fmt: skip


def install(built: Path, recipe: Recipe, catalogue: Path, name: str | None = None) -> Path:
    """Install the image built at ``built`` (holding ``root.img.qcow2``) into the
    runner catalogue ``catalogue`` atomically; return its place there.

    The recipe's ``image.toml`` and ``functions`` go with it, ``BUILD_JOB_FILE`` (which
    job built it) if ``built`` has one, and its aliases as symlinks. ``name``: the
    build's name in the catalogue (default: by its recipe hash; a job's build is named
    by its job too, as a rebuild of an unchanged recipe is a new image). The previous
    build of the same image is removed once nothing names it.
    """
    disk = built / DISK_FILE
    if not disk.is_file():
        raise ImageError(f"{built} holds no {DISK_FILE}: build the image first.")
    distro, release = recipe.canonical.split("/", 1)
    digest = (
        (built / HASH_FILE).read_text().strip()
        if (built / HASH_FILE).is_file()
        else recipe_hash(recipe)
    )
    store = catalogue / BUILDS
    store.mkdir(parents=True, exist_ok=True)
    target = store / (name or recipe.build_name(digest))
    if not target.exists():
        staging = store / f".{target.name}.{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            _link_or_copy(disk, staging / DISK_FILE)
            for file in ("image.toml", FUNCTIONS):
                if (recipe.directory / file).is_file():
                    shutil.copy2(recipe.directory / file, staging / file)
            if (built / BUILD_JOB_FILE).is_file():
                shutil.copy2(built / BUILD_JOB_FILE, staging / BUILD_JOB_FILE)
            (staging / HASH_FILE).write_text(digest + "\n")
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    release_dir = catalogue / distro / release
    release_dir.mkdir(parents=True, exist_ok=True)
    place = release_dir / recipe.arch
    previous = Path(os.readlink(place)).name if place.is_symlink() else None
    _swap_symlink(place, os.path.relpath(target, release_dir))
    for alias in _recipe_aliases(distro, release):
        _swap_symlink(catalogue / distro / alias, release)
    if previous and previous != target.name:
        shutil.rmtree(store / previous, ignore_errors=True)
    return place


def _recipe_aliases(distro: str, release: str) -> list[str]:
    release_dir = RECIPES / distro / release
    return [p.name for p in aliases_of(release_dir)] if release_dir.is_dir() else []


def _swap_symlink(place: Path, target: str) -> None:
    """Make ``place`` a symlink to ``target``, replacing what is there in one rename."""
    if place.exists() and not place.is_symlink():
        raise ImageError(f"{place} is in the way of an installed image: remove it first.")
    temporary = place.with_name(f".{place.name}.{os.getpid()}")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target)
    temporary.rename(place)


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:  # another file system: copy
        shutil.copy2(source, dest)
