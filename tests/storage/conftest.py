"""Fixtures for the object store tests: ``store`` is every implementation in turn."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from nixfarm.storage import FilesystemStore, ObjectStore, S3Store

if TYPE_CHECKING:
    # Imported for typing only: importing the plugin module before pytest registers
    # it would keep pytest from rewriting its asserts.
    from tests.fixtures.s3 import S3Server



@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_s3_store(server: S3Server, bucket: str, prefix: str = "farm") -> S3Store:
    return S3Store(
        bucket,
        server.endpoint,
        server.region,
        server.access_key_id,
        server.secret_access_key,
        prefix=prefix,
    )


@pytest.fixture(params=["fs", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """A fresh, empty store of each kind (S3 under a key prefix, to exercise it)."""
    if request.param == "fs":
        return FilesystemStore(tmp_path / "store")
    server: S3Server = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    return make_s3_store(server, bucket)
