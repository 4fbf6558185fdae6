"""Image names: the repository path of a pull is the list of packages to put in the image.

``/v2/hello/busybox/manifests/latest`` asks for an image holding ``hello`` and
``busybox``. Everything here happens before any name goes near Nix:

- Each ``/``-separated component must match the distribution spec's path component
  grammar (lower-case letters and digits, separated by ``.``, ``_``, ``__`` or dashes),
  at most 128 characters; the whole name at most 255. That rules out ``..``, ``;``,
  quotes, ``${``, spaces and every other piece of Nix syntax, but the names are still
  only ever handed to Nix as JSON data and looked up with ``builtins`` (see image.nix).
- A ``.`` inside a component is an attribute path (``haskellpackages.pandoc``). Docker
  names are lower-case, so image.nix falls back to a case-insensitive lookup when the
  exact attribute does not exist (``bashinteractive`` finds ``bashInteractive``).
- Meta-packages: ``shell`` adds a shell and core utilities (Nixery's list), ``arm64``
  builds the image for aarch64-linux instead of the server's own system.
- The remaining names are de-duplicated and sorted, so ``hello/busybox`` and
  ``busybox/hello`` are one image with one cache key and one manifest digest.
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass

from nixfarm.errors import InvalidInput

MAX_NAME = 255
MAX_COMPONENT = 128
MAX_TAG = 128

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")

#: Nixery's ``shell`` meta-package: what an interactive container needs.
SHELL_PACKAGES = ("bashInteractive", "coreutils", "moreutils", "nano")
ARM64_SYSTEM = "aarch64-linux"

_HOST_SYSTEMS = {"x86_64": "x86_64-linux", "amd64": "x86_64-linux",
                 "aarch64": "aarch64-linux", "arm64": "aarch64-linux"}


def host_system() -> str:
    """The Nix system of this machine (``x86_64-linux`` on the usual servers)."""
    machine = platform.machine().lower()
    return _HOST_SYSTEMS.get(machine, f"{machine}-linux")


@dataclass(frozen=True)
class ImageRequest:
    """A validated image: the sorted packages, the Nix system, and the name as asked."""

    name: str
    packages: tuple[str, ...]
    system: str

    @property
    def label(self) -> str:
        """How logs and the build page name the image: ``busybox/hello (x86_64-linux)``."""
        return f"{'/'.join(self.packages)} ({self.system})"


def check_name(name: str) -> list[str]:
    """The components of repository ``name``; InvalidInput(field="name") if it is bad."""
    if not name:
        raise InvalidInput("The image name is empty; name the packages, e.g. hello/busybox.",
                           field="name")
    if len(name) > MAX_NAME:
        raise InvalidInput(f"The image name is {len(name)} characters long; at most "
                           f"{MAX_NAME} are allowed.", field="name")
    components = name.split("/")
    for component in components:
        shown = component if len(component) <= 40 else component[:40] + "..."
        if len(component) > MAX_COMPONENT:
            raise InvalidInput(f"Package name {shown!r} is longer than {MAX_COMPONENT} "
                               "characters.", field="name")
        if not _COMPONENT.fullmatch(component):
            raise InvalidInput(
                f"{shown!r} is not a valid package name: use lower-case letters and digits "
                "separated by '.', '_' or '-'.", field="name")
    return components


def check_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid tag, else InvalidInput(field="tag")."""
    if len(tag) > MAX_TAG or not _TAG.fullmatch(tag):
        raise InvalidInput(f"{tag[:40]!r} is not a valid tag: up to {MAX_TAG} letters, digits, "
                           "'.', '_' and '-', not starting with '.' or '-'.", field="tag")
    return tag


def parse(name: str, system: str | None = None) -> ImageRequest:
    """Validate ``name`` and expand it into the image it asks for."""
    packages: set[str] = set()
    chosen = system or host_system()
    for component in check_name(name):
        if component == "shell":
            packages.update(SHELL_PACKAGES)
        elif component == "arm64":
            chosen = ARM64_SYSTEM
        else:
            packages.add(component)
    if not packages:
        raise InvalidInput(f"The image name {name!r} names no packages, only meta-packages.",
                           field="name")
    return ImageRequest(name=name, packages=tuple(sorted(packages)), system=chosen)
