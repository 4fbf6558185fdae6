"""Root filesystems composed from Nix packages: the ``nix`` image.

Given a package source (a directory whose ``default.nix`` is an attribute set, such
as nixpkgs or nixfarm/demo) and package names, we build the packages with nix, take
their closure, and write a *symlink forest*: a small directory tree whose /bin holds
one link per program of the packages (the first package listed wins a name), with
/usr/bin/env, /etc/passwd and /etc/group (root, build uid 1000, nobody), and empty
mount points (/home/build, /tmp, /proc, /dev, /nix/store). Programs of the
packages' dependencies get links too, after theirs: a job needs /bin/sh even when
it asked only for ``hello``. The links point into
/nix/store, where the sandbox binds exactly the closure, read-only; the forest
itself holds no package data and is shared by every job asking for the same outputs
(it is keyed by them).

    root = await compose_nix_root(source, ["hello"], cache_dir, nix_options=...)
    SandboxSpec(rootfs=root.root, store_paths=root.store_paths)

Building is the registry's code (``nixfarm.registry.nixbuild``): the same package
lookup (a missing package is named in the error), the same time limit, the same
closure query. Only the root that is made of the outputs differs: the registry packs
layers, a job gets this forest.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nixfarm.config import SourceSettings
from nixfarm.errors import InvalidInput
from nixfarm.nix import command as nix_command
from nixfarm.registry.names import ImageRequest, host_system
from nixfarm.registry.nixbuild import NixBuilder
from nixfarm.registry.sources import PackageSource

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "build:x:1000:1000:build:/home/build:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\nbuild:x:1000:build\nnogroup:x:65534:\n"
HOSTS = "127.0.0.1 localhost\n::1 localhost\n"
DEFAULT_TIMEOUT = 300.0
_ATTRIBUTE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class RootFS:
    """An image root and the store paths the sandbox must bind for it."""

    root: Path
    store_paths: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()


async def _request(source: Path | PackageSource, packages: Sequence[str]
                   ) -> tuple[ImageRequest, PackageSource]:
    for name in packages:
        if not _ATTRIBUTE.match(name):
            raise InvalidInput(f"{name!r} is not a package attribute name.", field="packages")
    if isinstance(source, Path):
        source = PackageSource(SourceSettings(kind="path", location=str(source)))
    # In the manifest's order, not sorted as image names are: the first package listed
    # wins a program name in the forest.
    return ImageRequest(name="job", packages=tuple(packages), system=host_system()), source


async def compose_nix_root(
    source: Path | PackageSource,
    packages: Sequence[str],
    cache_dir: Path,
    *,
    nix_options: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 - passed to nix.command.run
    on_line: Callable[[str], None] | None = None,
) -> RootFS:
    """Build ``packages`` (attribute names of ``source``) with the registry's builder and
    return a root for them (made once per set of outputs).

    Raises InvalidInput for a name that is not an attribute path, NotFound naming
    every package the source lacks, NixError when a build fails, NixTimeout.

    The outputs stay GC roots for as long as the root exists (``nix-<key>.roots/``
    beside it: indirect roots, so deleting the root's directory releases them); they
    are rooted from the moment nix-build made them, so a garbage collection at any
    time never leaves a cached root pointing at deleted store paths.
    """
    request, source = await _request(source, packages)
    if not packages:
        return RootFS(root=await _empty_root(cache_dir))
    resolved = await source.resolve("latest")
    builder = NixBuilder(nix_options or {}, timeout, cache_dir / "gcroots")
    async with builder.built(request, resolved, on_line) as built:
        outputs = built.roots
        closure = sorted(built.graph)
        key = hashlib.sha256("\n".join(outputs).encode()).hexdigest()[:32]
        root = cache_dir / f"nix-{key}"
        await _keep(root.with_name(root.name + ".roots"), outputs, builder)
        if not root.exists():
            # Programs of the packages asked for first, then of their dependencies (a
            # shell, mostly: tasks need /bin/sh even if no package listed one).
            order = [*outputs, *(p for p in closure if p not in outputs)]
            await asyncio.to_thread(_write_root, root, order)
    return RootFS(root=root, store_paths=tuple(closure), outputs=tuple(outputs))


async def _keep(roots_dir: Path, outputs: Sequence[str], builder: NixBuilder) -> None:
    """Make ``outputs`` indirect GC roots under ``roots_dir`` (idempotent)."""
    await asyncio.to_thread(roots_dir.mkdir, parents=True, exist_ok=True)
    for index, output in enumerate(outputs):
        link = roots_dir / str(index)
        if await asyncio.to_thread(_points_to, link, output):
            continue
        await nix_command.run(["nix-store", "--realise", output, "--add-root", str(link),
                               "--indirect", *builder.option_args()], timeout=60)


def _points_to(link: Path, target: str) -> bool:
    return link.is_symlink() and os.readlink(link) == target


async def _empty_root(cache_dir: Path) -> Path:
    root = cache_dir / "nix-empty"
    if not await asyncio.to_thread(root.exists):
        await asyncio.to_thread(_write_root, root, [])
    return root


def _write_root(root: Path, outputs: Iterable[str]) -> None:
    root.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=root.name + ".", dir=root.parent))
    try:
        write_forest(partial, outputs)
        partial.chmod(0o755)
        try:
            partial.rename(root)
        except OSError:
            if not root.exists():  # not just another job that was quicker
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def write_forest(root: Path, outputs: Iterable[str]) -> None:
    """Write the symlink forest for ``outputs`` into the (empty) directory ``root``."""
    for directory in ("bin", "usr/bin", "etc", "home/build", "tmp", "proc", "dev", "nix/store",
                      "root"):  # fmt: skip
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    for output in outputs:
        programs = Path(output) / "bin"
        if not programs.is_dir():
            continue
        for program in sorted(os.listdir(programs)):
            link = root / "bin" / program
            if not os.path.lexists(link):
                link.symlink_to(programs / program)
    if os.path.lexists(root / "bin/env"):
        (root / "usr/bin/env").symlink_to("/bin/env")
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/group").write_text(GROUP)
    (root / "etc/hosts").write_text(HOSTS)
    (root / "etc/resolv.conf").write_text("")  # mount point for the host's, with network
