"""Package popularity: how many packages of the set depend on each one.

Layer grouping keeps popular paths in layers of their own so that many images share
them (see grouping.py). The counts come from one of two places:

- a file (``registry.popularity_file``): a JSON object of name -> count, the format of
  Nixery's ``popularity.json`` (computed offline from a nixpkgs channel), or
- the package source itself: image.nix's ``dependencies`` lists, for every top-level
  package, the derivations its attributes refer to; a package's popularity is how many
  others refer to it. That needs an evaluation of the whole set: seconds for a small
  set, far too long for nixpkgs, where a file should be configured. A failed or slow
  evaluation only costs layer sharing, so it is logged and treated as "no data".

Counts change the layers and so the manifests: their hash is part of the manifest
cache key (``version``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from nixfarm.errors import ConfigError, NixError
from nixfarm.oci.manifest import canonical_json
from nixfarm.registry.grouping import popularity_from_graph
from nixfarm.registry.nixbuild import NixBuilder
from nixfarm.registry.sources import Resolved

log = logging.getLogger("nixfarm.registry")


@dataclass(frozen=True)
class Popularity:
    counts: dict[str, int]

    @property
    def version(self) -> str:
        return hashlib.sha256(canonical_json(self.counts)).hexdigest()[:16]


def load_file(path: Path) -> Popularity:
    """Read a popularity file; ConfigError if it is missing or not name -> count."""
    try:
        data = json.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"registry.popularity_file {str(path)!r} cannot be read: "
                          f"{exc.strerror}.", key="registry.popularity_file") from None
    except ValueError:
        raise ConfigError(f"registry.popularity_file {str(path)!r} is not JSON.",
                          key="registry.popularity_file") from None
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, int) for k, v in data.items()):
        raise ConfigError(f"registry.popularity_file {str(path)!r} must be a JSON object "
                          "mapping package names to counts.", key="registry.popularity_file")
    return Popularity(data)


class PopularitySource:
    """Popularity for a resolved source: the configured file, or computed once per source."""

    def __init__(self, builder: NixBuilder, file: str) -> None:
        self._builder = builder
        self._file = load_file(Path(file)) if file else None
        self._computed: dict[str, asyncio.Task[Popularity]] = {}

    async def get(self, source: Resolved, system: str) -> Popularity:
        if self._file is not None:
            return self._file
        # Keyed by what the source is, not its cache key: popularity of a moving target
        # changes slowly, and a slightly stale count only moves layer boundaries.
        key = f"{source.identity}|{system}"
        task = self._computed.get(key)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            # A failure is not remembered: the next pull tries again.
            task = asyncio.ensure_future(self._compute(source, system))
            self._computed[key] = task
        return await asyncio.shield(task)

    async def _compute(self, source: Resolved, system: str) -> Popularity:
        try:
            graph = await self._builder.dependencies(source, system)
        except NixError as exc:
            log.warning("cannot compute package popularity from %s: %s", source.identity,
                        exc.message)
            return Popularity({})
        counts = popularity_from_graph(graph)
        log.info("popularity of %d packages computed from %s", len(counts), source.identity)
        return Popularity(counts)
