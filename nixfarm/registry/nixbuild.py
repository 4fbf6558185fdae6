"""Evaluating and building an image's packages with Nix, and reading their closure.

Three nix commands, all under one deadline (``registry.nix_timeout``):

1. ``nix-instantiate --eval -A info``: which packages exist and their output paths.
   Missing ones end the request with a NotFound naming each of them.
2. ``nix-build -A outputs``: realise the outputs (substituting or building), with
   every stderr line handed to ``on_line`` as it arrives: the live build log. Under
   ``built`` the outputs get GC roots (gcroots.py) that last until the block ends, so
   the layers can be written from the store without a garbage collection in between.
3. ``nix path-info --json --recursive``: the runtime closure with each path's
   references and NAR size, the input of layer grouping.

The request reaches Nix only as the JSON value of ``--argstr request`` (see image.nix),
so nothing a client sends is ever parsed as Nix code.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nixfarm.errors import NixError, NixTimeout, NotFound
from nixfarm.nix import command
from nixfarm.registry.gcroots import GcRoots
from nixfarm.registry.names import ImageRequest
from nixfarm.registry.sources import Resolved

IMAGE_NIX = Path(__file__).with_name("image.nix")

LineSink = Callable[[str], None]


@dataclass(frozen=True)
class Closure:
    """What Nix built: each package's output paths and their runtime closure."""

    packages: tuple[tuple[str, tuple[str, ...]], ...]  # (name, output paths), request order
    graph: Mapping[str, Sequence[str]]  # store path -> references (self excluded)
    sizes: Mapping[str, int]  # store path -> NAR size

    @property
    def roots(self) -> list[str]:
        return [path for _, paths in self.packages for path in paths]


class Deadline:
    """Seconds left of one time limit shared by several commands."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        remaining = self._end - time.monotonic()
        if remaining <= 0:
            raise NixTimeout(f"Nix did not finish within {self.seconds:g} seconds.",
                             seconds=self.seconds)
        return remaining


class NixBuilder:
    """Runs image.nix for image requests; ``nix_options`` are passed to every command.

    ``roots_dir`` is where ``built`` keeps its GC roots (a directory of the system's
    temporary directory if not given).
    """

    def __init__(self, nix_options: Mapping[str, str], timeout: float,
                 roots_dir: Path | None = None) -> None:
        self.timeout = timeout
        self.roots = GcRoots(roots_dir or Path(tempfile.gettempdir()) / "nixfarm-gcroots")
        self._options = [arg for name, value in sorted(nix_options.items())
                         for arg in ("--option", name, value)]

    def option_args(self) -> list[str]:
        """The ``--option NAME VALUE`` arguments every nix command of this builder gets."""
        return list(self._options)

    def _args(self, request: ImageRequest, source: Resolved) -> list[str]:
        document = {"source": source.spec, "packages": list(request.packages),
                    "system": request.system}
        return [str(IMAGE_NIX), *self._options, "--argstr", "request", json.dumps(document)]

    async def _run(self, args: list[str], deadline: Deadline, on_line: LineSink | None,
                   what: str) -> str:
        try:
            return await command.run(args, timeout=deadline.left(), on_line=on_line)
        except NixTimeout as exc:
            where = f" (while building {exc.drv})" if exc.drv else ""
            raise NixTimeout(f"{what} did not finish within the registry's time limit of "
                             f"{deadline.seconds:g} seconds{where}.", drv=exc.drv,
                             log_tail=exc.log_tail, seconds=deadline.seconds) from None

    async def evaluate(self, request: ImageRequest, source: Resolved,
                       deadline: Deadline) -> list[tuple[str, tuple[str, ...]]]:
        """Each package's output paths; NotFound naming every package that does not exist."""
        out = await self._run(["nix-instantiate", "--eval", "--strict", "--json",
                               *self._args(request, source), "-A", "info"],
                              deadline, None, "Evaluating the packages")
        info: dict[str, Any] = json.loads(out)
        missing: list[str] = info["missing"]
        if missing:
            listed = ", ".join(repr(name) for name in missing)
            raise NotFound(
                f"The package source has no package {listed}." if len(missing) == 1 else
                f"The package source has no packages {listed}.",
                kind="package", name=",".join(missing))
        return [(p["name"], tuple(p["paths"])) for p in info["packages"]]

    @asynccontextmanager
    async def built(self, request: ImageRequest, source: Resolved,
                    on_line: LineSink | None = None) -> AsyncIterator[Closure]:
        """Build the image's packages and keep their closure alive until the block ends."""
        with self.roots.hold() as link:
            yield await self._build(request, source, on_line, link)

    async def _build(self, request: ImageRequest, source: Resolved, on_line: LineSink | None,
                     link: Path) -> Closure:
        deadline = Deadline(self.timeout)
        packages = await self.evaluate(request, source, deadline)
        try:
            await self._run(["nix-build", "--out-link", str(link), *self._args(request, source),
                             "-A", "outputs"], deadline, on_line, "Building the image")
        except NixTimeout:
            raise
        except NixError as exc:
            raise NixError(f"Building the image failed: {exc.message}", drv=exc.drv,
                           log_tail=exc.log_tail) from None
        roots = [path for _, paths in packages for path in paths]
        graph, sizes = await self.closure(roots, deadline)
        return Closure(packages=tuple(packages), graph=graph, sizes=sizes)

    async def closure(self, roots: Sequence[str], deadline: Deadline
                      ) -> tuple[dict[str, list[str]], dict[str, int]]:
        out = await self._run(["nix", *command.NIX_COMMAND, "path-info", "--json",
                               "--recursive", *self._options, *roots],
                              deadline, None, "Reading the closure")
        graph: dict[str, list[str]] = {}
        sizes: dict[str, int] = {}
        for entry in json.loads(out):
            path = entry["path"]
            graph[path] = sorted(set(entry.get("references", [])) - {path})
            sizes[path] = int(entry["narSize"])
        return graph, sizes

    async def dependencies(self, source: Resolved, system: str) -> dict[str, list[str]]:
        """Package name -> names of the derivations it refers to, over the whole source."""
        request = ImageRequest(name="", packages=(), system=system)
        out = await self._run(["nix-instantiate", "--eval", "--strict", "--json",
                               *self._args(request, source), "-A", "dependencies"],
                              Deadline(self.timeout), None, "Computing popularity")
        graph: dict[str, list[str]] = {}
        for entry in json.loads(out):
            refs = [Path(r).name.split("-", 1)[-1].removesuffix(".drv")
                    for r in entry["refs"] if r.endswith(".drv")]
            graph[entry["name"]] = refs
        return graph
