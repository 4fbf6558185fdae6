"""The keys every server of a farm shares: made once, fingerprinted, checked at start."""

from __future__ import annotations

import base64
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nixfarm import config, farmkeys
from nixfarm.db.engine import Database
from nixfarm.errors import ConfigError
from nixfarm.farmkeys import DEFAULT_FILES, REGISTRY_TOKEN, SECRETS


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _settings(data_dir: Path, **keys: str) -> config.Settings:
    return config.load(environ={}, overrides={"data_dir": str(data_dir), "keys": keys})


@pytest.mark.anyio
async def test_the_first_server_makes_the_keys_0600_and_the_next_must_hold_them(
        db: Database, tmp_path: Path) -> None:
    first = tmp_path / "a"
    keys = await farmkeys.load(_settings(first), db)
    for name, key in ((SECRETS, keys.secrets), (REGISTRY_TOKEN, keys.registry_token)):
        path = first / DEFAULT_FILES[name]
        assert path.read_bytes() == key and len(key) == 32
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys.secrets != keys.registry_token
    assert await farmkeys.load(_settings(first), db) == keys  # a restart: the same keys

    # A second server without the files refuses rather than make keys of its own ...
    second = tmp_path / "b"
    with pytest.raises(ConfigError, match=r"this farm's secrets key \(fingerprint [0-9a-f]{16}"
                                          r"\) is not at .*/b/secrets.key: copy it there"):
        await farmkeys.load(_settings(second), db)
    assert not (second / DEFAULT_FILES[SECRETS]).exists()
    # ... and one with a different key names it.
    second.mkdir()
    (second / DEFAULT_FILES[SECRETS]).write_bytes(bytes(32))
    with pytest.raises(ConfigError, match=r"the secrets key in .*/b/secrets.key \(fingerprint "
                                          r"[0-9a-f]{16}\) is not this farm's"):
        await farmkeys.load(_settings(second), db)
    # Given as configuration (base64), the farm's keys work from any data directory.
    shared = _settings(tmp_path / "c",
                       secrets=base64.b64encode(keys.secrets).decode(),
                       registry_token=base64.b64encode(keys.registry_token).decode())
    assert await farmkeys.load(shared, db) == keys
    assert not (tmp_path / "c").exists()


@pytest.mark.anyio
async def test_bad_configured_keys_are_named(db: Database, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"keys.secrets is not base64"):
        await farmkeys.load(_settings(tmp_path, secrets="not base64!"), db)
    with pytest.raises(ConfigError, match=r"keys.secrets must be 32 bytes \(base64\), not 5"):
        await farmkeys.load(_settings(tmp_path, secrets=base64.b64encode(b"short").decode()),
                            db)
    damaged = tmp_path / "damaged.key"
    damaged.write_bytes(b"short")
    with pytest.raises(ConfigError, match=r"damaged\.key is not a 32-byte key"):
        await farmkeys.load(_settings(tmp_path, secrets_file=str(damaged)), db)


def test_processes_racing_to_make_a_key_all_get_the_same_one(tmp_path: Path) -> None:
    path = tmp_path / DEFAULT_FILES[REGISTRY_TOKEN]
    program = ("import sys, time; from pathlib import Path; "
               "from nixfarm.keyfile import read_or_create; "
               "time.sleep(max(0.0, float(sys.argv[2]) - time.time())); "
               "print(read_or_create(Path(sys.argv[1]), 32).hex())")
    start = time.time() + 1.0  # every process is up and waiting by then
    racers = [subprocess.Popen([sys.executable, "-c", program, str(path), str(start)],
                               stdout=subprocess.PIPE, text=True) for _ in range(8)]
    keys = {racer.communicate(timeout=60)[0].strip() for racer in racers}
    assert all(racer.returncode == 0 for racer in racers)
    assert keys == {path.read_bytes().hex()}
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files
