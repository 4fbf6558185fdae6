"""What is particular to the filesystem store: its files, temporaries and sweeping."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from nixfarm.errors import StorageError
from nixfarm.storage import FilesystemStore

pytestmark = pytest.mark.anyio


def temporaries(store: FilesystemStore) -> list[str]:
    return sorted(os.listdir(store.root / ".tmp"))


async def test_objects_are_plain_files_under_the_root(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "s")
    await store.put("nar/ab/c.nar", b"data")
    assert (tmp_path / "s" / "nar" / "ab" / "c.nar").read_bytes() == b"data"
    assert store.local_path("nar/ab/c.nar") == tmp_path / "s" / "nar" / "ab" / "c.nar"


async def test_writes_stage_under_tmp_and_leave_nothing_there(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "s")
    async with store.writer() as writer:
        await writer.write(b"partial")
        assert len(temporaries(store)) == 1
        assert [info.key async for info in store.list()] == []
        await writer.commit("k")
    async with store.writer() as writer:
        await writer.write(b"partial")
    assert temporaries(store) == []


async def test_cancelled_write_removes_its_temporary(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "s")
    started = anyio.Event()

    async def endless_upload() -> None:
        async with store.writer() as writer:
            while True:
                await writer.write(b"x" * 65536)
                started.set()
                await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(endless_upload)
        await started.wait()
        tg.cancel_scope.cancel()
    assert temporaries(store) == []


def test_opening_sweeps_stale_temporaries_only(tmp_path: Path) -> None:
    root = tmp_path / "s"
    (root / ".tmp").mkdir(parents=True)
    stale, fresh = root / ".tmp" / "dead.part", root / ".tmp" / "live.part"
    stale.write_bytes(b"left by a crash")
    fresh.write_bytes(b"being written by another process")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    FilesystemStore(root)
    assert not stale.exists()
    assert fresh.exists()


async def test_a_key_cannot_be_both_object_and_directory(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "s")
    await store.put("a", b"file")
    with pytest.raises(StorageError) as caught:
        await store.put("a/b", b"nested")
    assert caught.value.key == "a/b"
    await store.put("c/d", b"nested")
    with pytest.raises(StorageError):
        await store.put("c", b"file")
    assert [info.key async for info in store.list()] == ["a", "c/d"]
    assert temporaries(store) == []


async def test_list_ignores_what_is_not_a_regular_file(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "s")
    await store.put("real", b"x")
    (store.root / "link").symlink_to(store.root / "real")
    os.mkfifo(store.root / "fifo")
    (store.root / "empty-dir").mkdir()
    (store.root / "not a key").write_bytes(b"put there by hand")
    assert [info.key async for info in store.list()] == ["real"]
    assert await store.stat("fifo") is None


async def test_abandoned_streams_do_not_leak_descriptors(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "s", chunk_size=4)
    await store.put("k", b"0123456789")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        stream = await store.get("k")
        assert await stream.__anext__() == b"0123"
        del stream  # never closed: the descriptor goes with the object
    async with await store.get("k") as stream:
        assert await stream.__anext__() == b"0123"
    assert len(os.listdir("/proc/self/fd")) == before


async def test_chunk_size_bounds_reads(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "s", chunk_size=4)
    await store.put("k", b"0123456789")
    assert [c async for c in store.get("k", 1, 9)] == [b"1234", b"5678"]


def test_unusable_root_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StorageError):
        FilesystemStore(tmp_path / "file" / "store")
