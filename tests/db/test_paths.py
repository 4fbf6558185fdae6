from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from nixfarm.db import paths
from nixfarm.db.engine import Database
from nixfarm.db.models import CachePath, Nar
from nixfarm.errors import IntegrityError, InvalidInput
from tests.db.helpers import file_hash, nar_hash, new_cache, new_nar, store_hash, store_path

pytestmark = pytest.mark.anyio

DRV = "inhn590vlv5z2gipq4sclzjc2n9m7gxp-probe-top.drv"


# -- NAR files --------------------------------------------------------------------------


async def test_add_nar_records_everything(db: Database) -> None:
    nar = await new_nar(db, "a")
    async with db.session() as session:
        found = await paths.get_nar_by_file_hash(session, file_hash("a"))
    assert found is not None
    assert found.id == nar.id
    assert (found.file_size, found.compression, found.nar_hash, found.nar_size) == (
        101,
        "zstd",
        nar_hash("a"),
        1001,
    )
    assert found.storage_key == "nar/a"


async def test_big_sizes_fit(db: Database) -> None:
    async with db.session() as session:
        nar = await paths.add_nar(
            session,
            file_hash=file_hash("big"),
            file_size=5 << 30,
            compression="xz",
            nar_hash=nar_hash("big"),
            nar_size=9 << 30,
            storage_key="nar/big",
        )
    async with db.session() as session:
        found = await paths.get_nar_by_file_hash(session, nar.file_hash)
    assert found is not None
    assert (found.file_size, found.nar_size) == (5 << 30, 9 << 30)


async def test_add_nar_is_idempotent_and_keeps_the_first_copy(db: Database) -> None:
    first = await new_nar(db, "a")
    async with db.session() as session:
        again = await paths.add_nar(
            session,
            file_hash=file_hash("a"),
            file_size=101,
            compression="zstd",
            nar_hash=nar_hash("a"),
            nar_size=1001,
            storage_key="nar/a-second-upload",
        )
    assert again.id == first.id
    assert again.storage_key == "nar/a"
    async with db.session() as session:
        assert await session.scalar(sa.select(sa.func.count()).select_from(Nar)) == 1


async def test_add_nar_with_contradicting_nar_hash(db: Database) -> None:
    await new_nar(db, "a")
    async with db.session() as session:
        with pytest.raises(IntegrityError) as info:
            await paths.add_nar(
                session,
                file_hash=file_hash("a"),
                file_size=101,
                compression="zstd",
                nar_hash=nar_hash("b"),
                nar_size=1001,
                storage_key="nar/x",
            )
    assert info.value.expected == f"{nar_hash('a')} 1001"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("file_hash", "sha256:" + "e" * 52),
        ("file_hash", "md5:" + "0" * 52),
        ("nar_hash", "sha256:abc"),
        ("compression", "lzma"),
    ],
)
async def test_add_nar_rejects_malformed_input(db: Database, field: str, value: str) -> None:
    args = {
        "file_hash": file_hash("a"),
        "file_size": 1,
        "compression": "none",
        "nar_hash": nar_hash("a"),
        "nar_size": 1,
        "storage_key": "k",
        field: value,
    }
    async with db.session() as session:
        with pytest.raises(InvalidInput) as info:
            await paths.add_nar(session, **args)  # type: ignore[arg-type]
    assert info.value.field == field


async def test_nar_membership_is_per_cache(db: Database) -> None:
    public = await new_cache(db, "public")
    private = await new_cache(db, "private")
    nar = await new_nar(db, "a", cache=private)
    async with db.session() as session:
        assert await paths.cache_nar(session, public.id, file_hash("a")) is None
        found = await paths.cache_nar(session, private.id, file_hash("a"))
        assert found is not None
        assert found.id == nar.id
        # Uploading the same file into the second cache links the one stored NAR.
        await paths.link_nar_to_cache(session, public.id, nar.id)
        await paths.link_nar_to_cache(session, public.id, nar.id)
        assert await paths.cache_nar(session, public.id, file_hash("a")) is not None
        assert await paths.cache_nar(session, public.id, file_hash("b")) is None


# -- store paths ------------------------------------------------------------------------


async def test_put_and_get_path(db: Database) -> None:
    cache = await new_cache(db)
    nar = await new_nar(db, "a", cache=cache)
    refs = [f"{store_hash('dep')}-dep", f"{store_hash('a')}-pkg-1.0"]
    async with db.session() as session:
        put = await paths.put_path(
            session,
            cache.id,
            store_path=store_path("a"),
            nar=nar,
            references=refs,
            deriver=DRV,
            sigs=["main-1:c2lnbmF0dXJl"],
        )
    assert put.store_hash == store_hash("a")
    async with db.session() as session:
        path = await paths.get_path(session, cache.id, store_hash("a"))
    assert path is not None
    assert path.store_path == store_path("a")
    assert path.reference_names == refs
    assert path.references == " ".join(refs)
    assert path.deriver == DRV
    assert path.ca is None
    assert path.sig_list == ["main-1:c2lnbmF0dXJl"]
    assert (path.nar_hash, path.nar_size) == (nar.nar_hash, nar.nar_size)
    # The NAR comes along, loaded: the narinfo needs its URL, hash and size.
    assert (path.nar.file_hash, path.nar.file_size, path.nar.compression) == (
        file_hash("a"),
        101,
        "zstd",
    )


async def test_content_addressed_path_without_references(db: Database) -> None:
    cache = await new_cache(db)
    nar = await new_nar(db, "ca", cache=cache)
    ca = "fixed:r:sha256:1b72lzcq7vbmslgfga36vwxlaz4wml4z6kkln6xiaf2b31ncscdx"
    async with db.session() as session:
        await paths.put_path(session, cache.id, store_path=store_path("ca"), nar=nar, ca=ca)
    async with db.session() as session:
        path = await paths.get_path(session, cache.id, store_hash("ca"))
    assert path is not None
    assert (path.ca, path.deriver, path.reference_names, path.sig_list) == (ca, None, [], [])


async def test_put_path_replaces(db: Database) -> None:
    cache = await new_cache(db)
    old = await new_nar(db, "old", cache=cache)
    new = await new_nar(db, "new", cache=cache)
    async with db.session() as session:
        first = await paths.put_path(
            session, cache.id, store_path=store_path("a"), nar=old, sigs=["k:old"]
        )
        second = await paths.put_path(
            session, cache.id, store_path=store_path("a"), nar=new, sigs=["k:new"]
        )
        assert second.id == first.id
        assert (second.nar.id, second.sig_list) == (new.id, ["k:new"])
    async with db.session() as session:
        path = await paths.get_path(session, cache.id, store_hash("a"))
        assert path is not None
        assert (path.nar_id, path.nar_hash, path.sigs) == (new.id, new.nar_hash, "k:new")
        assert await paths.count_paths(session, cache.id) == 1


async def test_paths_are_per_cache(db: Database) -> None:
    one = await new_cache(db, "one")
    two = await new_cache(db, "two")
    nar = await new_nar(db, "a", cache=one)
    async with db.session() as session:
        await paths.put_path(session, one.id, store_path=store_path("a"), nar=nar)
        assert await paths.get_path(session, two.id, store_hash("a")) is None
        assert await paths.get_path(session, one.id, store_hash("b")) is None


@pytest.mark.parametrize(
    "bad",
    [
        "nix/store/" + "a" * 32 + "-x",
        "/nix/store/" + "e" * 32 + "-x",
        "/nix/store/" + "a" * 31 + "-x",
        "/nix/store/" + "a" * 32 + "-",
        "/nix/store/" + "a" * 32 + "-x/sub",
    ],
)
async def test_put_path_rejects_bad_store_paths(db: Database, bad: str) -> None:
    cache = await new_cache(db)
    nar = await new_nar(db, "a", cache=cache)
    async with db.session() as session:
        with pytest.raises(InvalidInput) as info:
            await paths.put_path(session, cache.id, store_path=bad, nar=nar)
    assert info.value.field == "store_path"


async def test_missing_hashes(db: Database) -> None:
    cache = await new_cache(db)
    other = await new_cache(db, "other")
    nar = await new_nar(db, "a", cache=cache)
    async with db.session() as session:
        for seed in ("1", "2"):
            await paths.put_path(session, cache.id, store_path=store_path(seed), nar=nar)
        await paths.put_path(session, other.id, store_path=store_path("3"), nar=nar)
    asked = [store_hash(s) for s in ("4", "1", "3", "4", "2", "5")]
    async with db.session() as session:
        missing = await paths.missing_hashes(session, cache.id, asked)
        assert missing == [store_hash("4"), store_hash("3"), store_hash("5")]
        assert await paths.missing_hashes(session, cache.id, []) == []


async def test_missing_hashes_for_a_big_closure(db: Database) -> None:
    cache = await new_cache(db)
    nar = await new_nar(db, "a", cache=cache)
    present = [store_hash(str(i)) for i in range(0, 2500, 7)]
    async with db.session() as session:
        # A bulk insert: the test is about the lookup, not about put_path.
        await session.execute(
            sa.insert(CachePath),
            [
                {
                    "cache_id": cache.id,
                    "store_hash": h,
                    "store_path": f"/nix/store/{h}-x",
                    "nar_id": nar.id,
                    "nar_hash": nar.nar_hash,
                    "nar_size": nar.nar_size,
                    "created_at": datetime.now(UTC),
                }
                for h in present
            ],
        )
    asked = [store_hash(str(i)) for i in range(2500)]
    async with db.session() as session:
        missing = await paths.missing_hashes(session, cache.id, asked)
    assert missing == [h for h in asked if h not in set(present)]
    assert len(missing) == 2500 - len(present)


async def test_count_paths(db: Database) -> None:
    cache = await new_cache(db)
    nar = await new_nar(db, "a", cache=cache)
    async with db.session() as session:
        for i in range(7):
            await paths.put_path(session, cache.id, store_path=store_path(str(i)), nar=nar)
    async with db.session() as session:
        assert await paths.count_paths(session, cache.id) == 7


# -- build logs -------------------------------------------------------------------------


async def test_put_and_replace_log(db: Database) -> None:
    cache = await new_cache(db)
    other = await new_cache(db, "other")
    async with db.session() as session:
        first = await paths.put_log(session, cache.id, DRV, "log/1", 10)
        assert (first.storage_key, first.size) == ("log/1", 10)
        again = await paths.put_log(session, cache.id, DRV, "log/2", 20)
        assert again.id == first.id
        assert (again.storage_key, again.size) == ("log/2", 20)
    async with db.session() as session:
        log = await paths.get_log(session, cache.id, DRV)
        assert log is not None
        assert (log.drv, log.storage_key, log.size) == (DRV, "log/2", 20)
        assert await paths.get_log(session, other.id, DRV) is None


@pytest.mark.parametrize("drv", ["x.drv", f"/nix/store/{DRV}", DRV[:-4], DRV + "/.."])
async def test_put_log_rejects_non_derivations(db: Database, drv: str) -> None:
    cache = await new_cache(db)
    async with db.session() as session:
        with pytest.raises(InvalidInput):
            await paths.put_log(session, cache.id, drv, "log/x", 1)
