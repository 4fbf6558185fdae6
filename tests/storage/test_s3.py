"""What is particular to the S3 store: staging, multipart clean-up, prefixes, sweeping."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import obstore
import obstore.store
import pytest

from nixfarm.errors import InvalidInput, StorageError
from nixfarm.storage import S3Store
from tests.fixtures.s3 import S3Server
from tests.storage.conftest import make_s3_store

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024


def raw_store(server: S3Server, bucket: str) -> obstore.store.S3Store:
    """The bucket as a plain obstore client, with no nixfarm rules in the way."""
    return obstore.store.S3Store(
        bucket,
        endpoint=server.endpoint,
        region=server.region,
        access_key_id=server.access_key_id,
        secret_access_key=server.secret_access_key,
        client_options={"allow_http": True},
    )


def bucket_keys(server: S3Server, bucket: str) -> list[str]:
    listed = obstore.list(raw_store(server, bucket)).collect()
    return sorted(meta["path"] for meta in listed)


def open_uploads(server: S3Server, bucket: str) -> list[str]:
    """Keys of multipart uploads started and neither completed nor aborted."""
    response = httpx.get(f"{server.endpoint}/{bucket}?uploads")
    response.raise_for_status()
    return re.findall(r"<Upload>.*?<Key>(.*?)</Key>", response.text, re.DOTALL)


async def big_source(size: int, fail: bool = False) -> AsyncIterator[bytes]:
    for _ in range(size // MiB):
        yield b"z" * MiB
    if fail:
        raise RuntimeError("source failed")


@pytest.fixture
def s3(s3_server: S3Server, s3_bucket: str) -> S3Store:
    return make_s3_store(s3_server, s3_bucket)


async def test_objects_live_under_the_prefix(
    s3_server: S3Server, s3_bucket: str, s3: S3Store
) -> None:
    other = make_s3_store(s3_server, s3_bucket, prefix="other/farm")
    await s3.put("nar/x", b"mine")
    await other.put("nar/x", b"theirs")
    assert bucket_keys(s3_server, s3_bucket) == ["farm/nar/x", "other/farm/nar/x"]
    assert await s3.read("nar/x") == b"mine"
    assert [info.key async for info in other.list()] == ["nar/x"]


async def test_large_write_stages_then_cleans_up(
    s3_server: S3Server, s3_bucket: str, s3: S3Store
) -> None:
    async with s3.writer() as writer:
        async for chunk in big_source(20 * MiB):
            await writer.write(chunk)
        # Mid-upload: a multipart upload to a staging key, no visible object.
        assert [key.startswith("farm/.tmp/") for key in open_uploads(s3_server, s3_bucket)] == [
            True
        ]
        assert bucket_keys(s3_server, s3_bucket) == []
        await writer.commit("big")
    assert bucket_keys(s3_server, s3_bucket) == ["farm/big"]
    assert open_uploads(s3_server, s3_bucket) == []
    assert (await s3.stat("big")) is not None


async def test_aborted_and_failed_uploads_leave_no_parts(
    s3_server: S3Server, s3_bucket: str, s3: S3Store
) -> None:
    async with s3.writer() as writer:
        async for chunk in big_source(20 * MiB):
            await writer.write(chunk)
    with pytest.raises(RuntimeError):
        await s3.put("k", big_source(20 * MiB, fail=True))
    assert open_uploads(s3_server, s3_bucket) == []
    assert bucket_keys(s3_server, s3_bucket) == []


async def test_small_objects_are_put_directly(
    s3_server: S3Server, s3_bucket: str, s3: S3Store
) -> None:
    async with s3.writer() as writer:
        await writer.write(b"a" * (4 * MiB))
        assert open_uploads(s3_server, s3_bucket) == []
        await writer.commit("small")
    assert bucket_keys(s3_server, s3_bucket) == ["farm/small"]


async def test_first_writer_sweeps_stale_staged_objects(
    s3_server: S3Server, s3_bucket: str
) -> None:
    raw = raw_store(s3_server, s3_bucket)
    await obstore.put_async(raw, "farm/.tmp/orphan", b"left by a crash")
    patient = make_s3_store(s3_server, s3_bucket)  # default: only objects over an hour old
    await patient.put("a", b"1")
    assert "farm/.tmp/orphan" in bucket_keys(s3_server, s3_bucket)
    assert [info.key async for info in patient.list()] == ["a"]  # never listed
    eager = S3Store(
        s3_bucket,
        s3_server.endpoint,
        s3_server.region,
        s3_server.access_key_id,
        s3_server.secret_access_key,
        prefix="farm",
        stale_after=timedelta(0),
    )
    await eager.put("b", b"2")
    assert bucket_keys(s3_server, s3_bucket) == ["farm/a", "farm/b"]


async def test_missing_bucket_is_a_storage_error(s3_server: S3Server) -> None:
    store = make_s3_store(s3_server, "no-such-bucket")
    with pytest.raises(StorageError) as caught:
        await store.put("k", b"x")
    assert caught.value.key == "k"
    with pytest.raises(StorageError):
        await store.put("k", big_source(20 * MiB))
    # S3 answers 404 for a missing bucket too; that must not pass for a missing object.
    with pytest.raises(StorageError):
        await store.read("k")
    with pytest.raises(StorageError):
        await store.get("k")
    with pytest.raises(StorageError):
        await store.delete("k")


@pytest.mark.parametrize("expires", [0, -5, 8 * 24 * 3600])
async def test_presigned_url_expiry_bounds(s3: S3Store, expires: int) -> None:
    with pytest.raises(InvalidInput):
        await s3.presigned_url("k", expires)


def test_parts_must_be_at_least_5_mib(s3_server: S3Server) -> None:
    with pytest.raises(InvalidInput):
        S3Store("b", s3_server.endpoint, "us-east-1", "k", "s", part_size=MiB)
