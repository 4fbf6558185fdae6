"""open_store picks the store the settings name, or says which setting is missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nixfarm import config
from nixfarm.errors import ConfigError
from nixfarm.storage import FilesystemStore, S3Store, open_store
from tests.fixtures.s3 import S3Server

pytestmark = pytest.mark.anyio


def settings(**storage: Any) -> config.Settings:
    return config.load(environ={}, overrides={"storage": storage})


def test_fs_defaults_to_the_data_dir(tmp_path: Path) -> None:
    loaded = config.load(environ={"NIXFARM_DATA_DIR": str(tmp_path)})
    store = open_store(loaded)
    assert isinstance(store, FilesystemStore)
    assert store.root == tmp_path / "store"
    assert (tmp_path / "store").is_dir()


def test_fs_path_setting(tmp_path: Path) -> None:
    store = open_store(settings(kind="fs", path=str(tmp_path / "elsewhere")))
    assert isinstance(store, FilesystemStore)
    assert store.root == tmp_path / "elsewhere"


@pytest.mark.parametrize("missing", ["bucket", "access_key_id", "secret_access_key"])
def test_s3_names_the_missing_setting(missing: str) -> None:
    complete = {"bucket": "b", "access_key_id": "k", "secret_access_key": "s"}
    del complete[missing]
    with pytest.raises(ConfigError) as caught:
        open_store(settings(kind="s3", endpoint="http://127.0.0.1:1", **complete))
    assert caught.value.key == f"storage.{missing}"
    assert missing in caught.value.message


async def test_s3_from_environment_settings(s3_server: S3Server, s3_bucket: str) -> None:
    loaded = config.load(
        environ={
            "NIXFARM_STORAGE__KIND": "s3",
            "NIXFARM_STORAGE__BUCKET": s3_bucket,
            "NIXFARM_STORAGE__ENDPOINT": s3_server.endpoint,
            "NIXFARM_STORAGE__REGION": s3_server.region,
            "NIXFARM_STORAGE__ACCESS_KEY_ID": s3_server.access_key_id,
            "NIXFARM_STORAGE__SECRET_ACCESS_KEY": s3_server.secret_access_key,
            "NIXFARM_STORAGE__PREFIX": "cache",
        }
    )
    store = open_store(loaded)
    assert isinstance(store, S3Store)
    await store.put("nix-cache-info", b"StoreDir: /nix/store\n")
    assert await store.read("nix-cache-info") == b"StoreDir: /nix/store\n"
    assert [info.key async for info in store.list()] == ["nix-cache-info"]
