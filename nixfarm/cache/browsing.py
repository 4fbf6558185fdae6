"""What the web pages show of a cache: its size, its paths (searched, paged), one path
with its references and referrers, and its retention period.

Read-only but for the retention period, and, like the rest of ``cache/``, it trusts
that the caller checked who may see the cache (``server/auth.readable_cache``).
Retention is applied by ``retain_forever`` (``Farm.background``): every
``RETENTION_INTERVAL`` each cache with a period is collected as
``POST /api/v1/caches/NAME/gc`` with ``older_than_days`` would collect it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from nixfarm.cache import gc
from nixfarm.cache.service import CacheService, CacheView
from nixfarm.db import browsing
from nixfarm.db import paths as path_queries
from nixfarm.errors import InvalidInput, NotFound
from nixfarm.nix.storepath import is_hash_part
from nixfarm.wire.caches import GcReport

log = logging.getLogger(__name__)

#: How often retention periods are applied.
RETENTION_INTERVAL = timedelta(hours=1)
#: The longest retention period (a hundred years: the API's GC limit).
MAX_RETENTION_DAYS = 36500.0


@dataclass(frozen=True)
class CacheSummary:
    view: CacheView
    size: browsing.CacheSize
    #: Days of uploads garbage collection keeps; None keeps everything.
    retention_days: float | None


@dataclass(frozen=True)
class PathRef:
    basename: str
    #: The hash part when the cache has the path (a page to link to), else None.
    hash: str | None


@dataclass(frozen=True)
class PathDetail:
    store_path: str
    store_hash: str
    nar_hash: str
    nar_size: int
    file_hash: str
    file_size: int
    compression: str
    deriver: str | None
    ca: str | None
    signatures: list[str]
    references: list[PathRef]
    referrers: list[PathRef]
    #: Whether the cache holds the deriver's build log (``/cache/NAME/log/DRV``).
    has_log: bool
    created_at: datetime


def parse_retention(text: str) -> float | None:
    """A retention period from a form: days (decimals allowed), or empty for none."""
    text = text.strip()
    if not text:
        return None
    try:
        days = float(text)
    except ValueError:
        raise InvalidInput(f"retention {text!r} is not a number of days",
                           field="retention_days") from None
    if not math.isfinite(days) or not 0 < days <= MAX_RETENTION_DAYS:
        raise InvalidInput(f"retention must be more than 0 and at most {MAX_RETENTION_DAYS:g} "
                           "days (leave it empty to keep everything)", field="retention_days")
    return days


class CacheBrowser:
    def __init__(self, caches: CacheService) -> None:
        self.caches = caches

    async def summary(self, view: CacheView) -> CacheSummary:
        return (await self.summaries([view]))[0]

    async def summaries(self, views: list[CacheView]) -> list[CacheSummary]:
        """Each cache's summary, in two queries however many caches there are."""
        ids = [v.id for v in views]
        async with self.caches.db.session() as s:
            sizes = await browsing.cache_sizes(s, ids)
            retention = await browsing.retention_of(s, ids)
        for view in views:
            if view.id not in sizes:
                raise NotFound(f"There is no cache named {view.name!r}.", kind="cache",
                               name=view.name)
        return [CacheSummary(v, sizes[v.id], retention[v.id]) for v in views]

    async def search(self, view: CacheView, query: str, *, page: int, per_page: int
                     ) -> tuple[list[PathRef], bool]:
        """One page (from 1) of the paths matching ``query``, and whether more follow."""
        if page < 1:
            raise InvalidInput("page must be 1 or more", field="page")
        async with self.caches.db.session() as s:
            found = await browsing.search_paths(s, view.id, query, offset=(page - 1) * per_page,
                                                limit=per_page + 1)
        refs = [PathRef(p.store_path.rsplit("/", 1)[-1], p.store_hash) for p in found]
        return refs[:per_page], len(refs) > per_page

    async def path(self, view: CacheView, store_hash: str, *, max_referrers: int = 200
                   ) -> PathDetail:
        if not is_hash_part(store_hash):
            raise InvalidInput(f"{store_hash!r} is not a store path hash", field="hash")
        async with self.caches.db.session() as s:
            path = await path_queries.get_path(s, view.id, store_hash)
            if path is None:
                raise NotFound(f"cache {view.name!r} has no store path with hash "
                               f"{store_hash}", kind="path", name=store_hash)
            basename = path.store_path.rsplit("/", 1)[-1]
            present = await browsing.paths_by_basename(s, view.id, path.reference_names)
            referrers = await browsing.referrers(s, view.id, basename, max_referrers)
            has_log = path.deriver is not None and await browsing.has_log(s, view.id,
                                                                          path.deriver)
        references = [PathRef(r, present[r].store_hash if r in present else None)
                      for r in sorted(path.reference_names)]
        return PathDetail(
            store_path=path.store_path, store_hash=path.store_hash, nar_hash=path.nar_hash,
            nar_size=path.nar_size, file_hash=path.nar.file_hash,
            file_size=path.nar.file_size, compression=path.nar.compression,
            deriver=path.deriver, ca=path.ca, signatures=path.sig_list, references=references,
            referrers=[PathRef(p.store_path.rsplit("/", 1)[-1], p.store_hash)
                       for p in referrers],
            has_log=has_log, created_at=path.created_at)

    async def set_retention(self, view: CacheView, days: float | None) -> None:
        async with self.caches.db.session() as s:
            await browsing.set_retention(s, view.id, days)

    async def apply_retention(self) -> list[GcReport]:
        """Collect every cache that has a retention period, once."""
        async with self.caches.db.session() as s:
            periods = await browsing.retained(s)
        reports = []
        for name, days in periods:
            report = await gc.collect(self.caches, name, timedelta(days=days))
            if report.paths_removed or report.nar_files_removed:
                log.info("cache %s: retention of %g days removed %d paths, %d bytes", name,
                         days, report.paths_removed, report.bytes_freed)
            reports.append(report)
        return reports

    async def retain_forever(self, interval: timedelta = RETENTION_INTERVAL) -> None:
        """``apply_retention`` every ``interval`` until cancelled. Several servers may all
        do it: a collection tolerates another one running (see ``cache/gc``)."""
        while True:
            await asyncio.sleep(interval.total_seconds())
            try:
                await self.apply_retention()
            except Exception:  # one failed round must not end retention for good
                log.exception("cache retention failed; trying again in %s", interval)
