"""Where a job's root filesystem comes from: the catalogue, or composed from Nix.

Two kinds of image:

- ``nix``: a root composed from the manifest's ``packages`` out of the server's Nix
  package source (``nixroot.compose_nix_root``); the sandbox binds the closure.
- catalogue images, ``<distro>/<release>`` for an arch, from ``nixfarm/images/``
  (see its README): each has an ``image.toml`` and a ``genimg`` that builds its root
  directory. Roots are built once, on first use, into ``built_dir`` and reused; two
  jobs asking at once wait for one build.

``Images.prepare`` gives the steps a ``PreparedImage``: the root, the store paths to
bind, and whether the image can install packages at all.
"""

from __future__ import annotations

import asyncio
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nixfarm.config import SourceSettings
from nixfarm.errors import NotFound
from nixfarm.nix import command
from nixfarm.registry.sources import PackageSource
from nixfarm.runner.nixroot import DEFAULT_TIMEOUT, compose_nix_root

CATALOGUE = Path(__file__).resolve().parent.parent / "images"
NIX_IMAGE = "nix"
DEFAULT_ARCH = "x86_64"


@dataclass(frozen=True)
class ImageEntry:
    """One catalogue image: ``name`` is ``distro/release``."""

    name: str
    arch: str
    directory: Path
    description: str = ""
    package_manager: str = "none"


@dataclass(frozen=True)
class PreparedImage:
    name: str
    root: Path
    store_paths: tuple[str, ...] = ()
    #: "nix" (packages were composed in), "none", or a distro's package manager.
    package_manager: str = "none"
    #: Store paths of the requested packages (nix image only).
    outputs: tuple[str, ...] = ()


class Catalogue:
    """The images under ``catalogue``, with roots built into ``built_dir``."""

    def __init__(self, built_dir: Path, catalogue: Path = CATALOGUE) -> None:
        self.catalogue = catalogue
        self.built_dir = built_dir
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def entries(self) -> list[ImageEntry]:
        found = []
        for manifest in sorted(self.catalogue.glob("*/*/*/image.toml")):
            directory = manifest.parent
            data = tomllib.loads(manifest.read_text())
            found.append(
                ImageEntry(
                    name=f"{directory.parent.parent.name}/{directory.parent.name}",
                    arch=directory.name,
                    directory=directory,
                    description=str(data.get("description", "")),
                    package_manager=str(data.get("package_manager", "none")),
                )
            )
        return found

    def find(self, name: str, arch: str = DEFAULT_ARCH) -> ImageEntry:
        for entry in self.entries():
            if entry.name == name and entry.arch == arch:
                return entry
        raise NotFound(f"There is no image {name} for {arch}.", kind="image", name=name)

    async def root(
        self,
        entry: ImageEntry,
        *,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 - passed to nix.command.run
        on_line: Callable[[str], None] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Path:
        """The built root of ``entry``, running its ``genimg`` the first time."""
        root = self.built_dir / entry.name / entry.arch / "root"
        lock = self._locks.setdefault((entry.name, entry.arch), asyncio.Lock())
        async with lock:
            if not root.exists():
                await asyncio.to_thread(root.parent.mkdir, parents=True, exist_ok=True)
                # genimg writes only $1 and its own temporary sibling.
                await command.run(
                    [str(entry.directory / "genimg"), str(root)],
                    timeout=timeout,
                    on_line=on_line,
                    env=env,
                )
        return root


@dataclass
class Images:
    """Every image this runner can give a job."""

    catalogue: Catalogue
    #: The Nix package source for the ``nix`` image; None: no ``nix`` image.
    nix_source: Path | None = None
    nix_options: Mapping[str, str] = field(default_factory=dict)
    nix_timeout: float = DEFAULT_TIMEOUT
    _source: PackageSource | None = field(default=None, init=False, repr=False)

    def names(self) -> set[str]:
        names = {entry.name for entry in self.catalogue.entries()}
        return names | {NIX_IMAGE} if self.nix_source is not None else names

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
        if name == NIX_IMAGE:
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
        entry = self.catalogue.find(name, arch or DEFAULT_ARCH)
        root = await self.catalogue.root(entry, timeout=self.nix_timeout, on_line=on_line)
        return PreparedImage(name, root, (), entry.package_manager)


def _host_arch() -> str:
    return os.uname().machine
