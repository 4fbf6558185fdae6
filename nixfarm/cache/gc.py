"""Garbage collection of one binary cache: drop what was uploaded before a cutoff.

Inputs: a cache, a cutoff (now - ``older_than``), and every path of the cache as
(hash, references, deriver, uploaded at, NAR). The rule:

    roots      = paths uploaded at or after the cutoff          (they stay)
    kept       = roots + everything they refer to, transitively,
                 within this cache                              (closures stay whole)
    removed    = the rest: old paths nothing that stays needs

so a path that stays is always substitutable together with its whole closure, however
old its dependencies are. ``paths_kept`` counts the old paths kept only for that reason.

Then, in this order, so a reader never sees a narinfo whose NAR is gone:

    1. the removed paths' rows (their narinfos vanish),      a thousand per transaction
    2. their build logs older than the cutoff, unless a kept path has the same deriver
    3. NAR files no path in ANY cache uses any more: those of removed paths, and NARs
       uploaded into this cache whose narinfo never came. Only NARs stored before the
       cutoff and before a grace period (``NAR_GRACE``), so an upload in flight (its
       NAR stored, its narinfo not yet) is never taken. Their stored files and ``.ls``
       listings are deleted after their rows.

After each step this server drops its memos and the files it published for nginx, and
publishes ``cache.forget`` on the event bus so that other servers do the same
(``follow``; a re-upload publishes the same message, see CacheService).

Races, and why they are tolerable: every delete repeats its condition (a path uploaded
again meanwhile is newer than the cutoff; a NAR a path uses now is not unused), and a
NAR file whose row reappeared (the same file uploaded again) keeps its stored object.
A push that asked the server which paths it lacks *before* the collection, and uploads
a path referring to an old one *after* it, can still leave a closure incomplete: push
again to repair it. The report of a dry run is computed by exactly the same code, with
every write skipped.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from nixfarm.cache.service import _NAR_FILE, FORGET_TOPIC, CacheService, listing_key, nar_key
from nixfarm.db import caches as cache_queries
from nixfarm.db import gc as gc_queries
from nixfarm.db.models import utcnow
from nixfarm.errors import InvalidInput
from nixfarm.events.base import EventBus
from nixfarm.naming import check_cache_name
from nixfarm.nix.storepath import is_hash_part
from nixfarm.wire.caches import GcReport

log = logging.getLogger(__name__)

#: A NAR stored more recently than this is never collected: its narinfo may be on its way.
NAR_GRACE = timedelta(hours=1)


def closure_split(rows: Sequence[gc_queries.PathRow], cutoff: datetime
                  ) -> tuple[set[str], set[str]]:
    """(kept, removed) store hashes of a cache's paths, by the rule in the module doc."""
    by_hash = {row.store_hash: row for row in rows}
    stack = [row.store_hash for row in rows if row.created_at >= cutoff]
    kept = set(stack)
    while stack:
        for reference in by_hash[stack.pop()].references:
            if reference in by_hash and reference not in kept:
                kept.add(reference)
                stack.append(reference)
    return kept, set(by_hash) - kept


async def collect(caches: CacheService, cache: str, older_than: timedelta, *,
                  dry_run: bool = False, grace: timedelta = NAR_GRACE) -> GcReport:
    """Collect ``cache``'s garbage (or, ``dry_run``, only say what it would be)."""
    if older_than <= timedelta(0):
        raise InvalidInput("older_than must be a positive duration", field="older_than")
    now = utcnow()
    cutoff = now - older_than
    nar_before = min(cutoff, now - grace)
    async with caches.db.session() as s:
        cache_id = (await cache_queries.get_cache(s, cache)).id
        rows = await gc_queries.path_rows(s, cache_id)
    kept, removed = closure_split(rows, cutoff)
    by_hash = {row.store_hash: row for row in rows}
    old_kept = sum(1 for h in kept if by_hash[h].created_at < cutoff)
    kept_derivers = {by_hash[h].deriver for h in kept}
    drvs = sorted({d for h in removed if (d := by_hash[h].deriver) and d not in kept_derivers})
    removed_nars = {by_hash[h].nar_id for h in removed}
    del rows, by_hash, kept, kept_derivers

    # What would go, computed before anything is written (so a dry run is the same).
    async with caches.db.session() as s:
        logs: list[tuple[int, int]] = []
        for part in gc_queries.chunks(drvs):
            logs += [(entry.id, entry.size) for entry in
                     await gc_queries.old_logs(s, cache_id, part, cutoff)]
        candidates = removed_nars | set(await gc_queries.orphan_nars(s, cache_id, nar_before))
        nars = await _freed_nars(s, cache_id, removed, sorted(candidates), nar_before)
    if dry_run:
        return GcReport(cache=cache, dry_run=True, cutoff=cutoff, paths_removed=len(removed),
                        paths_kept=old_kept, nar_files_removed=len(nars),
                        logs_removed=len(logs),
                        bytes_freed=sum(n.file_size for n in nars) + sum(size for _, size in logs))

    gone: list[str] = []
    for part in gc_queries.chunks(sorted(removed)):
        async with caches.db.session() as s:
            deleted = await gc_queries.delete_paths(s, cache_id, part, cutoff)
        gone += deleted
        await caches.forget_everywhere(cache, deleted, [])

    freed = 0
    logs_removed = 0
    for log_part in gc_queries.chunks(logs):
        async with caches.db.session() as s:
            deleted_logs = await gc_queries.delete_logs(s, [i for i, _ in log_part], cutoff)
        for key, size in deleted_logs:
            await caches.store.delete(key)
            freed += size
        logs_removed += len(deleted_logs)

    files: list[str] = []
    for nar_part in gc_queries.chunks(nars):
        async with caches.db.session() as s:
            deleted_nars = await gc_queries.delete_unused_nars(s, [n.id for n in nar_part])
        async with caches.db.session() as s:
            # The same file uploaded again since: its new row names the same object.
            back = await gc_queries.stored_file_hashes(s, [n.file_hash for n in deleted_nars])
        names = []
        for nar in deleted_nars:
            if nar.file_hash in back:
                continue
            await caches.store.delete(nar.storage_key)
            await caches.store.delete(listing_key(nar.file_hash))
            freed += nar.file_size
            names.append(nar_key(nar.file_hash, nar.compression).removeprefix("nar/"))
        files += names
        await caches.forget_everywhere(cache, [], names)

    # A reader that looked a path up just before its row went may have published its
    # answer for nginx just after it was withdrawn: withdraw everything once more.
    caches.forget(cache, gone, files)
    log.info("cache gc: cache=%s paths=%d kept=%d nars=%d logs=%d bytes=%d", cache, len(gone),
             old_kept, len(files), logs_removed, freed)
    return GcReport(cache=cache, dry_run=False, cutoff=cutoff, paths_removed=len(gone),
                    paths_kept=old_kept, nar_files_removed=len(files),
                    logs_removed=logs_removed, bytes_freed=freed)


async def _freed_nars(s: AsyncSession, cache_id: int, removed: set[str],
                      candidates: Sequence[int], before: datetime) -> list[gc_queries.NarRow]:
    """Those candidates whose every user is a removed path of this cache."""
    freed: list[gc_queries.NarRow] = []
    for part in gc_queries.chunks(candidates):
        users = await gc_queries.nar_users(s, part)
        needed = {n for n, c, h in users if c != cache_id or h not in removed}
        unused = [n for n in part if n not in needed]
        if unused:
            freed += await gc_queries.nars_before(s, unused, before)
    return freed


def apply(caches: CacheService, message: bytes) -> None:
    """Apply another server's ``cache.forget`` message; malformed ones are logged, ignored."""
    try:
        body = json.loads(message)
        cache, hashes, files = body["cache"], body["hashes"], body["nar_files"]
        check_cache_name(cache)
        if not _all(hashes, is_hash_part) or not _all(files, _is_nar_file):
            raise ValueError("bad hash or NAR file name")
    except (ValueError, KeyError, TypeError, InvalidInput) as e:
        log.warning("cache gc: ignoring a malformed %s message: %s", FORGET_TOPIC, e)
        return
    caches.forget(cache, hashes, files)


async def follow(caches: CacheService, events: EventBus) -> None:
    """Apply ``cache.forget`` messages as they come, until cancelled (``Farm.background``)."""
    while True:
        try:
            async with events.subscribe(FORGET_TOPIC) as subscription:
                async for message in subscription:
                    apply(caches, message)
        except Exception as e:  # a lost bus connection: subscribe again, a little later
            log.warning("cache gc: following %s failed: %s", FORGET_TOPIC, e)
            await asyncio.sleep(1.0)


def _all(items: object, check: Callable[[str], bool]) -> bool:
    return isinstance(items, list) and all(isinstance(i, str) and check(i) for i in items)


def _is_nar_file(name: str) -> bool:
    return _NAR_FILE.fullmatch(name) is not None
