"""What every ObjectStore guarantees, checked against each implementation."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.lowlevel
import httpx
import pytest

from nixfarm.errors import InvalidInput, NotFound, StorageError
from nixfarm.storage import FilesystemStore, ObjectInfo, ObjectStore, S3Store

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
# More than an S3Store part (8 MiB), so the S3 writer takes its multipart path.
BIG = 12 * MiB


async def chunks_of(data: bytes, size: int = MiB) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]
        await anyio.lowlevel.checkpoint()


async def collect(store: ObjectStore, key: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in store.get(key, start, end)])


async def keys(store: ObjectStore, prefix: str = "") -> list[str]:
    return [info.key async for info in store.list(prefix)]


def pattern(size: int, seed: int = 0) -> bytes:
    """Bytes in which every position differs from its neighbours' (catches misplaced ranges)."""
    block = bytes((i * 7 + seed) % 251 for i in range(251))
    return (block * (size // len(block) + 1))[:size]


# -- round trips ----------------------------------------------------------------------


async def test_put_bytes_then_read_stat_and_get(store: ObjectStore) -> None:
    info = await store.put("nar/abc.nar", b"hello world")
    assert info == ObjectInfo(key="nar/abc.nar", size=11)
    assert await store.read("nar/abc.nar") == b"hello world"
    assert await store.stat("nar/abc.nar") == ObjectInfo(key="nar/abc.nar", size=11)
    assert await collect(store, "nar/abc.nar") == b"hello world"


async def test_put_async_iterable_of_many_chunks(store: ObjectStore) -> None:
    data = pattern(BIG + 12345)
    info = await store.put("big", chunks_of(data, 300_000))
    assert info.size == len(data)
    stream = await store.get("big")
    parts = [chunk async for chunk in stream]
    assert len(parts) > 1, "a big object is streamed in several chunks"
    assert b"".join(parts) == data


async def test_empty_object(store: ObjectStore) -> None:
    assert await store.put("empty", b"") == ObjectInfo("empty", 0)
    assert await store.read("empty") == b""
    assert await collect(store, "empty") == b""
    assert await store.stat("empty") == ObjectInfo("empty", 0)


async def test_writer_reports_size_and_commits(store: ObjectStore) -> None:
    async with store.writer() as writer:
        assert writer.size == 0
        await writer.write(b"abc")
        await writer.write(b"defg")
        assert writer.size == 7
        info = await writer.commit("w/one")
        await writer.abort()  # a no-op after commit
    assert info == ObjectInfo("w/one", 7)
    assert await store.read("w/one") == b"abcdefg"


async def test_writer_refuses_writes_after_commit(store: ObjectStore) -> None:
    async with store.writer() as writer:
        await writer.write(b"x")
        await writer.commit("k")
        with pytest.raises(StorageError):
            await writer.write(b"y")
        with pytest.raises(StorageError):
            await writer.commit("k2")
    assert await store.read("k") == b"x"
    assert await store.stat("k2") is None


async def test_overwrite_replaces_whole_object(store: ObjectStore) -> None:
    await store.put("k", pattern(BIG, seed=1))
    await store.put("k", b"short")
    assert await store.read("k") == b"short"
    assert await store.stat("k") == ObjectInfo("k", 5)
    await store.put("k", chunks_of(pattern(BIG, seed=2)))
    assert await collect(store, "k") == pattern(BIG, seed=2)


# -- ranges -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0, None, slice(0, None)),
        (2, 5, slice(2, 5)),
        (5, None, slice(5, None)),
        (3, 1000, slice(3, None)),  # clamped to the size
        (0, 11, slice(0, 11)),
        (10, 11, slice(10, 11)),
        (11, None, slice(11, 11)),  # at the end: empty
        (50, None, slice(0, 0)),  # past the end: empty
        (50, 60, slice(0, 0)),
        (4, 4, slice(0, 0)),  # empty range
    ],
)
async def test_ranges(store: ObjectStore, start: int, end: int | None, expected: slice) -> None:
    data = b"hello world"
    await store.put("r", data)
    assert await collect(store, "r", start, end) == data[expected]
    stream = await store.get("r", start, end)
    assert stream.object_size == len(data)  # the whole object's, for Content-Range
    await stream.aclose()


async def test_range_of_a_big_object_spans_chunks(store: ObjectStore) -> None:
    data = pattern(BIG)
    await store.put("big", chunks_of(data))
    start, end = MiB - 17, 5 * MiB + 3
    assert await collect(store, "big", start, end) == data[start:end]
    assert await collect(store, "big", BIG - 10) == data[-10:]


@pytest.mark.parametrize(("start", "end"), [(-1, None), (5, 4), (-3, -1)])
async def test_bad_ranges_are_invalid_input(
    store: ObjectStore, start: int, end: int | None
) -> None:
    await store.put("r", b"hello")
    with pytest.raises(InvalidInput):
        store.get("r", start, end)


# -- missing objects ----------------------------------------------------------------------


async def test_missing_object_raises_not_found_when_opened(store: ObjectStore) -> None:
    stream = store.get("nope")  # nothing happens until it is opened
    with pytest.raises(NotFound) as caught:
        await stream
    assert caught.value.name == "nope"
    assert caught.value.kind == "object"
    for start, end in [(0, None), (3, 10), (4, 4)]:
        with pytest.raises(NotFound):
            await store.get("nope", start, end)
    with pytest.raises(NotFound):
        await store.read("nope")
    assert await store.stat("nope") is None


async def test_missing_object_raises_before_the_first_chunk_when_iterated(
    store: ObjectStore,
) -> None:
    seen: list[bytes] = []
    with pytest.raises(NotFound):
        async for chunk in store.get("a/b/c"):
            seen.append(chunk)
    assert seen == []


async def test_directory_like_prefix_is_not_an_object(store: ObjectStore) -> None:
    await store.put("dir/file", b"x")
    assert await store.stat("dir") is None
    with pytest.raises(NotFound):
        await store.read("dir")
    with pytest.raises(NotFound):
        await store.get("dir")


async def test_stream_context_manager_and_early_close(store: ObjectStore) -> None:
    await store.put("big", chunks_of(pattern(BIG)))
    async with await store.get("big") as stream:
        first = await stream.__anext__()
        assert first == pattern(BIG)[: len(first)]
    assert [chunk async for chunk in stream] == []  # closed: nothing more
    stream2 = await store.get("big")
    await stream2.aclose()
    await stream2.aclose()


# -- delete and list ------------------------------------------------------------------------


async def test_delete_is_idempotent(store: ObjectStore) -> None:
    await store.put("d/x", b"1")
    await store.delete("d/x")
    assert await store.stat("d/x") is None
    with pytest.raises(NotFound):
        await store.get("d/x")
    await store.delete("d/x")
    await store.delete("never/existed")
    assert await keys(store) == []


async def test_list_by_prefix_in_key_order(store: ObjectStore) -> None:
    contents = {"a/b": b"1", "a/c/d": b"22", "ab": b"333", "a-b": b"4", "b": b"55555"}
    for key, value in contents.items():
        await store.put(key, value)
    assert await keys(store) == ["a-b", "a/b", "a/c/d", "ab", "b"]
    assert await keys(store, "a/") == ["a/b", "a/c/d"]
    assert await keys(store, "a") == ["a-b", "a/b", "a/c/d", "ab"]
    assert await keys(store, "a/c") == ["a/c/d"]
    assert await keys(store, "a/c/") == ["a/c/d"]
    assert await keys(store, "a/b") == ["a/b"]
    assert await keys(store, "b") == ["b"]
    assert await keys(store, "zz") == []
    assert await keys(store, "x/y/") == []
    sizes = {info.key: info.size async for info in store.list()}
    assert sizes == {key: len(value) for key, value in contents.items()}


@pytest.mark.parametrize("prefix", ["../", "a//", "/a", "a b", "./x"])
async def test_list_rejects_bad_prefixes(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(InvalidInput):
        await keys(store, prefix)


# -- keys --------------------------------------------------------------------------------------

BAD_KEYS = [
    "",
    "/a",
    "a/",
    "a//b",
    ".",
    "..",
    "./a",
    "a/./b",
    "a/../b",
    "../a",
    "a b",
    "a\\b",
    "a\nb",
    "caf\u00e9",
    "a?b",
    "a%2fb",
    ".tmp/x",
    ".tmp",
    "x" * 1025,
    "a/" + "y" * 256,
]


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_bad_keys_are_invalid_input(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        await store.put(key, b"x")
    assert caught.value.field == "key"
    with pytest.raises(InvalidInput):
        store.get(key)
    with pytest.raises(InvalidInput):
        await store.read(key)
    with pytest.raises(InvalidInput):
        await store.stat(key)
    with pytest.raises(InvalidInput):
        await store.delete(key)
    with pytest.raises(InvalidInput):
        store.local_path(key)
    with pytest.raises(InvalidInput):
        await store.presigned_url(key, 60)
    async with store.writer() as writer:
        await writer.write(b"x")
        with pytest.raises(InvalidInput):
            await writer.commit(key)
        # A bad key leaves the writer usable.
        await writer.commit("good")
    assert await keys(store) == ["good"]


@pytest.mark.parametrize("key", ["a.b-c_d/E.F", ".hidden", "a/..b", "a/.tmp/x", "x" * 255])
async def test_unusual_good_keys(store: ObjectStore, key: str) -> None:
    await store.put(key, key.encode())
    assert await store.read(key) == key.encode()
    assert await keys(store) == [key]


async def test_put_checks_the_key_before_consuming_the_source(store: ObjectStore) -> None:
    consumed = False

    async def source() -> AsyncIterator[bytes]:
        nonlocal consumed
        consumed = True
        yield b"x"

    with pytest.raises(InvalidInput):
        await store.put("bad//key", source())
    assert not consumed


# -- atomicity ---------------------------------------------------------------------------------


class Boom(Exception):
    pass


@pytest.mark.parametrize("size", [100, BIG])
async def test_failing_source_stores_nothing(store: ObjectStore, size: int) -> None:
    await store.put("k", b"old")

    async def failing() -> AsyncIterator[bytes]:
        async for chunk in chunks_of(pattern(size)):
            yield chunk
        raise Boom

    with pytest.raises(Boom):
        await store.put("k", failing())
    with pytest.raises(Boom):
        await store.put("fresh", failing())
    assert await store.read("k") == b"old"
    assert await store.stat("fresh") is None
    assert await keys(store) == ["k"]


@pytest.mark.parametrize("size", [100, BIG])
async def test_aborted_writer_leaves_nothing(store: ObjectStore, size: int) -> None:
    async with store.writer() as writer:
        await writer.write(pattern(size))
        await writer.abort()
        await writer.abort()
        with pytest.raises(StorageError):
            await writer.commit("k")
    async with store.writer() as writer:  # left without commit
        await writer.write(pattern(size))
    with pytest.raises(Boom):
        async with store.writer() as writer:
            await writer.write(pattern(size))
            raise Boom
    assert await keys(store) == []


async def test_reader_never_sees_a_partial_object(store: ObjectStore) -> None:
    old, new = pattern(BIG, seed=1), pattern(BIG, seed=2)
    await store.put("k", old)
    seen: list[bytes] = []
    committed = anyio.Event()

    async def read_until_new() -> None:
        while True:
            data = await collect(store, "k")
            seen.append(data)
            assert data in (old, new), f"reader saw {len(data)} bytes of a partial object"
            if committed.is_set() and data == new:
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(read_until_new)
        async with store.writer() as writer:
            async for chunk in chunks_of(new, 256 * 1024):
                await writer.write(chunk)
                await anyio.sleep(0.002)
            await writer.commit("k")
        committed.set()
    assert seen[0] == old
    assert seen[-1] == new


async def test_open_stream_keeps_reading_the_version_it_opened(store: ObjectStore) -> None:
    old, new = pattern(3 * MiB, seed=1), pattern(3 * MiB, seed=2)
    await store.put("k", old)
    stream = await store.get("k")
    first = await stream.__anext__()
    await store.put("k", new)
    rest = b"".join([chunk async for chunk in stream])
    assert first + rest == old
    assert await store.read("k") == new


# -- direct access ---------------------------------------------------------------------------


async def test_local_path(store: ObjectStore) -> None:
    await store.put("nar/x.nar", b"content")
    path = store.local_path("nar/x.nar")
    if isinstance(store, FilesystemStore):
        assert path is not None
        assert path.read_bytes() == b"content"
        assert store.local_path("nar/missing") is None
        assert store.local_path("nar") is None  # a directory is not an object
    else:
        assert path is None


async def test_presigned_url(store: ObjectStore) -> None:
    data = pattern(3 * MiB)
    await store.put("nar/y.nar", data)
    url = await store.presigned_url("nar/y.nar", 300)
    if isinstance(store, S3Store):
        assert url is not None
        async with httpx.AsyncClient() as client:
            response = await client.get(url)
            assert response.status_code == 200
            assert response.content == data
            # The signature is what grants access. (moto does not verify signatures,
            # so a tampered URL cannot be tested here.)
            unsigned = await client.get(url.split("?")[0])
            assert unsigned.status_code == 403
    else:
        assert url is None


# -- memory ------------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} missing from /proc/self/status")


def _reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS counter (VmHWM) and return the current RSS in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS") * 1024


@pytest.mark.slow
async def test_streaming_200_mib_keeps_memory_flat(store: ObjectStore) -> None:
    size, chunk = 200 * MiB, MiB
    await store.put("warm-up", chunks_of(pattern(BIG)))  # thread pools, connections
    await collect(store, "warm-up")
    written = hashlib.sha256()

    async def source() -> AsyncIterator[bytes]:
        for i in range(size // chunk):
            data = i.to_bytes(4, "big") * (chunk // 4)
            written.update(data)
            yield data

    base = _reset_peak_rss()
    info = await store.put("huge", source())
    write_peak = _status_kib("VmHWM") * 1024 - base
    assert info.size == size

    base = _reset_peak_rss()
    read = hashlib.sha256()
    async for data in store.get("huge"):
        read.update(data)
    read_peak = _status_kib("VmHWM") * 1024 - base

    assert read.hexdigest() == written.hexdigest()
    # The S3 writer holds at most a few 8 MiB parts; the filesystem one, a chunk.
    assert write_peak < 64 * MiB, f"writing 200 MiB grew RSS by {write_peak / MiB:.0f} MiB"
    assert read_peak < 64 * MiB, f"reading 200 MiB grew RSS by {read_peak / MiB:.0f} MiB"
