"""Cache garbage collection against a real database (SQLite and PostgreSQL), a real
filesystem object store, real NARs (made by nixfarm's NAR writer) and the edge tree.

Paths are made old by moving their ``created_at`` (and their NAR's) back with an UPDATE.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from nixfarm import config
from nixfarm.cache import gc
from nixfarm.cache.service import FORGET_TOPIC, CacheService, PathUpload, listing_key, nar_key
from nixfarm.db.engine import Database
from nixfarm.db.models import CachePath, Nar, utcnow
from nixfarm.edge.cache import CacheEdge
from nixfarm.edge.layout import EdgeLayout
from nixfarm.edge.tree import EdgeTree
from nixfarm.errors import InvalidInput
from nixfarm.events.memory import MemoryBus
from nixfarm.nix import nar, nix32
from nixfarm.storage.fs import FilesystemStore
from tests.db.helpers import store_hash

pytestmark = pytest.mark.anyio
MONTH = timedelta(days=30)


@dataclass
class Env:
    service: CacheService
    store: FilesystemStore
    edge: EdgeTree
    tmp: Path

    @property
    def db(self) -> Database:
        return self.service.db

    async def upload(self, cache: str, name: str, refs: tuple[str, ...] = (),
                     content: str | None = None, deriver: str | None = None) -> str:
        """Upload a one-file store path ``name`` referring to ``refs``; its store path."""
        directory = self.tmp / "src" / f"{cache}-{name}"
        directory.mkdir(parents=True)
        (directory / "file").write_text(content or f"{cache} {name}")
        data = b"".join(nar.dump(directory))
        path = f"/nix/store/{store_hash(name)}-{name}"
        digest = "sha256:" + nix32.encode(hashlib.sha256(data).digest())
        upload = PathUpload(path, digest, len(data), [p for p in refs], deriver, None)
        await self.service.receive_path(cache, upload, "none", _chunks(data))
        return path

    async def nar_of(self, cache: str, path: str) -> Nar:
        hash_part = path.removeprefix("/nix/store/")[:32]
        async with self.db.session() as s:
            row = await s.scalar(sa.select(CachePath).where(CachePath.store_hash == hash_part)
                                 .limit(1))
            assert row is not None
            return row.nar

    async def age(self, *paths: str, days: float = 60) -> None:
        """Make these paths (in every cache) and their NARs ``days`` old."""
        hashes = [p.removeprefix("/nix/store/")[:32] for p in paths]
        old = utcnow() - timedelta(days=days)
        async with self.db.session() as s:
            await s.execute(sa.update(CachePath).where(CachePath.store_hash.in_(hashes))
                            .values(created_at=old))
            nar_ids = sa.select(CachePath.nar_id).where(CachePath.store_hash.in_(hashes))
            await s.execute(sa.update(Nar).where(Nar.id.in_(nar_ids)).values(created_at=old))

    async def narinfo(self, cache: str, path: str) -> bytes | None:
        return await self.service.narinfo(cache, path.removeprefix("/nix/store/")[:32])


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 100):
        yield data[start:start + 100]


@pytest.fixture
async def env(db: Database, tmp_path: Path) -> Env:
    settings = config.load(environ={}, overrides={"data_dir": str(tmp_path / "data")})
    store = FilesystemStore(tmp_path / "store")
    layout = EdgeLayout(tmp_path / "edge")
    layout.reset()
    service = CacheService(db, store, settings, CacheEdge(EdgeTree(layout)))
    await service.create("main")
    await service.create("other")
    return Env(service, store, EdgeTree(layout), tmp_path)


def _file(n: Nar) -> str:
    return nar_key(n.file_hash, n.compression).removeprefix("nar/")


async def test_old_unreferenced_path_goes_with_its_nar_file(env: Env) -> None:
    old = await env.upload("main", "old")
    new = await env.upload("main", "new")
    old_nar = await env.nar_of("main", old)
    await env.age(old)
    assert await env.narinfo("main", old) is not None  # remembered now: must be forgotten
    env.edge.publish(f"cache/main/{old[11:43]}.narinfo", b"published")
    assert env.edge.link(f"cache/main/nar/{_file(old_nar)}",
                         env.store.local_path(old_nar.storage_key) or Path("/"))

    report = await gc.collect(env.service, "main", MONTH)

    assert (report.paths_removed, report.paths_kept, report.nar_files_removed) == (1, 0, 1)
    assert report.bytes_freed == old_nar.file_size and not report.dry_run
    assert await env.narinfo("main", old) is None
    assert await env.narinfo("main", new) is not None
    assert await env.store.stat(old_nar.storage_key) is None
    assert await env.store.stat(listing_key(old_nar.file_hash)) is None
    assert not env.edge.has(f"cache/main/{old[11:43]}.narinfo")
    assert not env.edge.has(f"cache/main/nar/{_file(old_nar)}")
    new_nar = await env.nar_of("main", new)
    assert await env.store.stat(new_nar.storage_key) is not None
    # Nothing left to collect: a second run removes nothing.
    again = await gc.collect(env.service, "main", MONTH)
    assert (again.paths_removed, again.nar_files_removed, again.bytes_freed) == (0, 0, 0)


async def test_old_paths_a_new_path_needs_stay_transitively(env: Env) -> None:
    base = await env.upload("main", "base")
    lib = await env.upload("main", "lib", refs=(base,))
    stray = await env.upload("main", "stray")
    await env.age(base, lib, stray)
    app = await env.upload("main", "app", refs=(lib,))

    report = await gc.collect(env.service, "main", MONTH)

    assert (report.paths_removed, report.paths_kept) == (1, 2)
    for kept in (base, lib, app):
        assert await env.narinfo("main", kept) is not None
        assert await env.store.stat((await env.nar_of("main", kept)).storage_key) is not None
    assert await env.narinfo("main", stray) is None


async def test_a_nar_shared_with_another_cache_is_not_deleted(env: Env) -> None:
    mine = await env.upload("main", "shared", content="same")
    theirs = await env.upload("other", "shared", content="same")  # one NAR, two caches
    shared = await env.nar_of("main", mine)
    await env.age(mine, theirs)

    report = await gc.collect(env.service, "main", MONTH)

    assert (report.paths_removed, report.nar_files_removed, report.bytes_freed) == (1, 0, 0)
    assert await env.narinfo("main", mine) is None
    assert await env.narinfo("other", theirs) is not None
    assert await env.store.stat(shared.storage_key) is not None
    # Once the other cache lets go of it too, the file goes.
    report = await gc.collect(env.service, "other", MONTH)
    assert (report.paths_removed, report.nar_files_removed) == (1, 1)
    assert await env.store.stat(shared.storage_key) is None


async def test_dry_run_changes_nothing_and_reports_what_would_go(env: Env) -> None:
    base = await env.upload("main", "base")
    old = await env.upload("main", "old")
    await env.age(base, old)
    await env.upload("main", "new", refs=(base,))
    stored = sorted([o.key async for o in env.store.list()])

    dry = await gc.collect(env.service, "main", MONTH, dry_run=True)

    assert dry.dry_run and (dry.paths_removed, dry.paths_kept, dry.nar_files_removed) == (1, 1, 1)
    assert sorted([o.key async for o in env.store.list()]) == stored
    assert await env.narinfo("main", old) is not None
    real = await gc.collect(env.service, "main", MONTH)
    assert real.model_dump(exclude={"dry_run", "cutoff"}) == dry.model_dump(
        exclude={"dry_run", "cutoff"})


async def test_a_nar_waiting_for_its_narinfo_survives_the_grace_period(env: Env) -> None:
    data = b"".join(nar.dump(_tree(env.tmp / "pending", "pending")))
    name = f"{nix32.encode(hashlib.sha256(data).digest())}.nar"
    await env.service.receive_nar_file("main", name, _chunks(data))
    key = f"nar/{name}"
    assert await env.store.stat(key) is not None

    # Even a one-minute cutoff leaves it: it was stored less than the grace period ago.
    report = await gc.collect(env.service, "main", timedelta(minutes=1))
    assert report.nar_files_removed == 0
    assert await env.store.stat(key) is not None

    # An orphan older than both is collected: its narinfo never came.
    async with env.db.session() as s:
        await s.execute(sa.update(Nar).values(created_at=utcnow() - timedelta(days=60)))
    report = await gc.collect(env.service, "main", MONTH)
    assert (report.paths_removed, report.nar_files_removed) == (0, 1)
    assert await env.store.stat(key) is None


async def test_build_logs_go_with_their_paths_unless_a_kept_path_shares_the_deriver(
        env: Env) -> None:
    drv_old = f"/nix/store/{store_hash('drv-old')}-old.drv"
    drv_split = f"/nix/store/{store_hash('drv-split')}-split.drv"
    old = await env.upload("main", "old", deriver=drv_old)
    out = await env.upload("main", "split-out", deriver=drv_split)
    await env.upload("main", "split-dev", deriver=drv_split)
    await env.age(old, out)
    for drv in (drv_old, drv_split):
        await env.service.receive_log("main", drv[11:], _chunks(b"log of " + drv.encode()))
    async with env.db.session() as s:
        await s.execute(sa.text("UPDATE build_logs SET created_at = :t"),
                        {"t": utcnow() - timedelta(days=60)})

    report = await gc.collect(env.service, "main", MONTH)

    assert (report.paths_removed, report.logs_removed) == (2, 1)
    assert await env.store.stat(f"log/1/{drv_old[11:]}") is None
    assert (await env.service.log("main", drv_split[11:])).size > 0


async def test_other_servers_forget_through_the_event_bus(env: Env) -> None:
    old = await env.upload("main", "old")
    old_nar = await env.nar_of("main", old)
    await env.age(old)
    bus = MemoryBus()
    env.service.events = bus
    async with bus.subscribe(FORGET_TOPIC) as subscription:
        await gc.collect(env.service, "main", MONTH)
        messages = [await subscription.get(1) for _ in range(2)]
    bodies = [json.loads(m or b"") for m in messages]
    assert bodies == [{"cache": "main", "hashes": [old[11:43]], "nar_files": []},
                      {"cache": "main", "hashes": [], "nar_files": [_file(old_nar)]}]

    # Another server that had published both answers for nginx withdraws them.
    env.edge.publish(f"cache/other/{old[11:43]}.narinfo", b"x")
    env.edge.publish(f"cache/other/nar/{_file(old_nar)}", b"x")
    gc.apply(env.service, json.dumps({"cache": "other", "hashes": [old[11:43]],
                                      "nar_files": [_file(old_nar)]}).encode())
    assert not env.edge.has(f"cache/other/{old[11:43]}.narinfo")
    assert not env.edge.has(f"cache/other/nar/{_file(old_nar)}")
    # A malformed message changes nothing and raises nothing.
    env.edge.publish("cache/other/nix-cache-info", b"x")
    for bad in (b"{", b"{}", json.dumps({"cache": "other", "hashes": ["../nix-cache-info"],
                                         "nar_files": []}).encode()):
        gc.apply(env.service, bad)
    assert env.edge.has("cache/other/nix-cache-info")
    await bus.close()


async def test_bad_cutoff_and_unknown_cache_are_refused(env: Env) -> None:
    with pytest.raises(InvalidInput) as refused:
        await gc.collect(env.service, "main", timedelta(0))
    assert refused.value.field == "older_than"
    from nixfarm.errors import NotFound

    with pytest.raises(NotFound):
        await gc.collect(env.service, "nope", MONTH)


def test_closure_split_follows_references_within_the_cache() -> None:
    from nixfarm.db.gc import PathRow

    now = utcnow()
    old = now - timedelta(days=60)
    rows = [PathRow("a", ("a",), None, old, 1), PathRow("b", ("a", "x"), None, old, 2),
            PathRow("c", ("b",), None, now, 3), PathRow("d", ("a",), None, old, 4)]
    kept, removed = gc.closure_split(rows, now - MONTH)
    assert (kept, removed) == ({"a", "b", "c"}, {"d"})


def _tree(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True)
    (directory / "file").write_text(text)
    return directory


# --- retention periods (cache/browsing.py), applied by the farm every hour ----------


async def test_retention_collects_only_caches_that_have_a_period(env: Env) -> None:
    from nixfarm.cache.browsing import CacheBrowser, parse_retention

    browser = CacheBrowser(env.service)
    kept_forever = await env.upload("other", "forever")
    old = await env.upload("main", "old")
    recent = await env.upload("main", "recent")
    await env.age(old, kept_forever, days=10)
    assert await browser.apply_retention() == []  # no period anywhere: nothing collected

    await browser.set_retention(await env.service.get("main"), parse_retention("7"))
    assert (await browser.summary(await env.service.get("main"))).retention_days == 7.0
    reports = await browser.apply_retention()

    assert [(r.cache, r.paths_removed) for r in reports] == [("main", 1)]
    assert await env.narinfo("main", old) is None
    assert await env.narinfo("main", recent) is not None
    assert await env.narinfo("other", kept_forever) is not None
    for bad in ("0", "-3", "nan", "a week", "40000"):
        with pytest.raises(InvalidInput):
            parse_retention(bad)
    assert parse_retention("  ") is None
