"""Where a job's root filesystem comes from: the catalogue, or composed from Nix.

Three kinds of image:

- ``nix``: a root composed from the manifest's ``packages`` out of the server's Nix
  package source (``nixroot.compose_nix_root``); the sandbox binds the closure.
- ``root`` images of the catalogue, ``<distro>/<release>`` for an arch, from the
  recipes in ``nixfarm/images/`` (see ``nixfarm.images``): a ``genimg`` builds the
  root directory. Roots are built once, on first use, into ``built_dir`` and reused;
  two jobs asking at once wait for one build.
- ``nix`` images of the catalogue (``nix/base``): a Nix image description, its
  packages composed like ``nix``'s (with the job's ``packages`` added).
- ``disk`` images (``root.img.qcow2``) installed into the runner's catalogue,
  ``built_dir`` itself (``nixfarm image install``): only a VM runs them. The runner
  reads its catalogue at each job and each re-registration, so an image installed
  while it runs is offered at once.

``Images.prepare`` gives the steps a ``PreparedImage``: the root (or disk), the store
paths to bind, the image's ``functions`` and whether it can install packages at all.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nixfarm import images as catalogue_files
from nixfarm.config import SourceSettings
from nixfarm.errors import NotFound
from nixfarm.images import DEFAULT_ARCH, RECIPES, Recipe
from nixfarm.nix import command
from nixfarm.registry.sources import PackageSource
from nixfarm.runner.nixroot import DEFAULT_TIMEOUT, compose_nix_root

NIX_IMAGE = "nix"


@dataclass(frozen=True)
class PreparedImage:
    name: str
    #: The root directory (root and nix images) or the disk image file (disk images).
    root: Path
    store_paths: tuple[str, ...] = ()
    #: "nix" (packages were composed in), "none", or a distro's package manager.
    package_manager: str = "none"
    #: Store paths of the requested packages (nix image only).
    outputs: tuple[str, ...] = ()
    #: True: ``root`` is a qcow2 disk image, which only a VM runs.
    disk: bool = False
    #: The image's functions file (install, add_repository, ...), if it has one.
    functions: Path | None = None


class Catalogue:
    """Root images from the recipes in ``catalogue``, built into ``built_dir``; and
    the disk images installed in ``built_dir`` (the runner's catalogue)."""

    def __init__(self, built_dir: Path, catalogue: Path = RECIPES) -> None:
        self.catalogue = catalogue
        self.built_dir = built_dir
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def entries(self) -> list[Recipe]:
        """Every image this catalogue can give: root recipes, installed disk images."""
        found = [r for r in catalogue_files.read(self.catalogue) if r.kind in ("root", "nix")]
        if self.built_dir.is_dir():
            found += [r for r in catalogue_files.read(self.built_dir)
                      if r.kind == "disk" and r.disk is not None]  # fmt: skip
        return found

    def find(self, name: str, arch: str = DEFAULT_ARCH,
             entries: Sequence[Recipe] | None = None) -> Recipe:
        """The entry ``name`` for ``arch``, among ``entries`` (read once by the caller)
        or the catalogue's now; NotFound saying how to build it."""
        for entry in self.entries() if entries is None else entries:
            if entry.name == name and entry.arch == arch:
                return entry
        hint = catalogue_files.how_to_build(name, arch)
        raise NotFound(f"There is no image {name} for {arch}" + (f" ({hint})." if hint else "."),
                       kind="image", name=name)  # fmt: skip

    async def root(
        self,
        entry: Recipe,
        *,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 - passed to nix.command.run
        on_line: Callable[[str], None] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Path:
        """The built root of ``entry``, running its ``genimg`` the first time."""
        if entry.kind == "disk":
            assert entry.disk is not None, entry
            # The build itself (the catalogue's symlink resolved): a VM pool keys its warm
            # VMs by this path, and a new build installed must not get an old one's VM.
            return await asyncio.to_thread(entry.disk.resolve)
        root = self.built_dir / entry.name / entry.arch / "root"
        lock = self._locks.setdefault((entry.name, entry.arch), asyncio.Lock())
        genimg = entry.genimg
        if genimg is None:
            raise NotFound(f"Image {entry.name} has no genimg.", kind="image", name=entry.name)
        async with lock:
            if not root.exists():
                await asyncio.to_thread(root.parent.mkdir, parents=True, exist_ok=True)
                # genimg writes only $1 and its own temporary sibling.
                await command.run(entry.genimg_argv(genimg, root), timeout=timeout,
                                  on_line=on_line, env=env)
        return root


@dataclass(frozen=True)
class ImageChoice:
    """The image a job asked for, with the catalogue as it was read once for the job:
    whether packages are composed into it and how it is prepared agree, and the
    catalogue is not read again by each."""

    name: str
    arch: str | None
    entries: tuple[Recipe, ...]

    @property
    def composes(self) -> bool:
        """Whether the job's ``packages`` are composed into it (nix images)."""
        return self.name == NIX_IMAGE or any(
            e.name == self.name and e.kind == "nix" for e in self.entries)


@dataclass
class Images:
    """Every image this runner can give a job."""

    catalogue: Catalogue
    #: The Nix package source for the ``nix`` image; None: no ``nix`` image.
    nix_source: Path | None = None
    nix_options: Mapping[str, str] = field(default_factory=dict)
    nix_timeout: float = DEFAULT_TIMEOUT
    _source: PackageSource | None = field(default=None, init=False, repr=False)

    def names(self, sandboxes: Collection[str] = ("bwrap", "vm")) -> set[str]:
        """The images a runner with ``sandboxes`` can run (a disk image needs vm; the
        nix images need a Nix package source)."""
        names = {entry.name for entry in self.catalogue.entries()
                 if set(entry.sandboxes) & set(sandboxes)
                 and (entry.kind != "nix" or self.nix_source is not None)}  # fmt: skip
        return names | {NIX_IMAGE} if self.nix_source is not None else names

    def choose(self, name: str, arch: str | None) -> ImageChoice:
        """Image ``name`` for ``arch`` as the catalogue has it now (one read)."""
        return ImageChoice(name, arch, tuple(self.catalogue.entries()))

    def composes(self, name: str) -> bool:
        """Whether a job's ``packages`` are composed into image ``name`` (nix images)."""
        return self.choose(name, None).composes

    def arches(self) -> set[str]:
        return {entry.arch for entry in self.catalogue.entries()} | {_host_arch()}

    async def prepare(
        self,
        name: str,
        arch: str | None,
        packages: Sequence[str],
        on_line: Callable[[str], None] | None = None,
    ) -> PreparedImage:
        """The root for image ``name``; for ``nix``, with ``packages`` composed in.

        Raises NotFound for an image (or arch) we don't have; NixError/NixTimeout
        when building fails.
        """
        return await self.prepare_chosen(self.choose(name, arch), packages, on_line)

    async def prepare_chosen(
        self,
        choice: ImageChoice,
        packages: Sequence[str],
        on_line: Callable[[str], None] | None = None,
    ) -> PreparedImage:
        """``prepare`` for an image chosen already (``choose``)."""
        name, arch = choice.name, choice.arch
        entry = None if name == NIX_IMAGE else self.catalogue.find(
            name, arch or DEFAULT_ARCH, choice.entries)
        if entry is None or entry.kind == "nix":
            if entry is not None:  # a Nix image description: its packages, then the job's
                packages = [*entry.packages, *(p for p in packages if p not in entry.packages)]
            if self.nix_source is None:
                raise NotFound("This runner has no Nix package source.", kind="image", name=name)
            if arch not in (None, _host_arch()):
                raise NotFound(f"The nix image is only built for {_host_arch()}.", "image", name)
            if self._source is None:  # one per runner: it remembers the source's hash
                self._source = PackageSource(
                    SourceSettings(kind="path", location=str(self.nix_source)))
            built = await compose_nix_root(
                self._source,
                packages,
                self.catalogue.built_dir / NIX_IMAGE,
                nix_options=self.nix_options,
                timeout=self.nix_timeout,
                on_line=on_line,
            )
            return PreparedImage(name, built.root, built.store_paths, NIX_IMAGE, built.outputs)
        root = await self.catalogue.root(entry, timeout=self.nix_timeout, on_line=on_line)
        return PreparedImage(name, root, (), entry.package_manager,
                             disk=entry.kind == "disk", functions=entry.functions)


def _host_arch() -> str:
    return os.uname().machine
