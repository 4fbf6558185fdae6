"""Settings: TOML plus NIXFARM_* variables; every mistake names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from nixfarm import config
from nixfarm.errors import ConfigError

EXAMPLE = Path(__file__).parents[1] / "docs" / "config.example.toml"


def test_defaults() -> None:
    s = config.load(environ={})
    assert s.listen == "127.0.0.1:8080" and s.port == 8080
    assert s.storage.kind == "fs" and s.storage_path == s.data_dir / "store"
    assert s.db_url.startswith("sqlite:///") and s.db_url.endswith("nixfarm.db")
    assert s.cache.compression == "zstd"
    assert s.registry.nix_timeout == 60 and s.registry.layer_budget == 94
    assert s.jobs.timeout_minutes == 45


def test_the_documented_example_is_valid() -> None:
    s = config.load(EXAMPLE, environ={})
    assert s.storage.kind == "fs"


def test_toml_then_environment(tmp_path: Path) -> None:
    f = tmp_path / "farm.toml"
    f.write_text('listen = "0.0.0.0:9000"\n[storage]\nkind = "s3"\nbucket = "b"\n')
    s = config.load(f, environ={"NIXFARM_STORAGE__BUCKET": "env-bucket",
                                "NIXFARM_URL": "http://ignored", "NIXFARM_TOKEN": "x"})
    assert s.listen == "0.0.0.0:9000" and s.storage.kind == "s3"
    assert s.storage.bucket == "env-bucket"
    assert config.load(environ={"NIXFARM_CONFIG": str(f)}).port == 9000


@pytest.mark.parametrize(("toml", "env", "key"), [
    ("lissen = '1'\n", {}, "lissen"),
    ("[storage]\nbucket_name = 'x'\n", {}, "storage.bucket_name"),
    ("", {"NIXFARM_STORAGE__KIND": "gcs"}, "storage.kind"),
    ("", {"NIXFARM_LISTEN": "nowhere"}, "listen"),
    ("[registry]\nnix_timeout = 'soon'\n", {}, "registry.nix_timeout"),
    ("", {"NIXFARM_JOBS__NOPE": "1"}, "jobs.nope"),
    ("[web.oidc]\nissuer = 'https://id.example.org'\n", {}, "web.oidc.client_id"),
    ("[web.oidc]\nissuer = 'id.example.org'\nclient_id = 'x'\n", {}, "web.oidc.issuer"),
])
def test_mistakes_name_the_key(tmp_path: Path, toml: str, env: dict[str, str],
                               key: str) -> None:
    f = tmp_path / "farm.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        config.load(f, environ=env)
    assert caught.value.key == key
    assert repr(key) in caught.value.message


def test_unreadable_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "missing.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("listen = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(bad, environ={})


def test_the_data_directory_holds_the_default_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    # No file named, none in the data directory: defaults.
    assert config.load(environ={"NIXFARM_DATA_DIR": str(data)}).port == 8080
    (data / config.DEFAULT_FILE).write_text('listen = "127.0.0.1:9100"\n')
    assert config.load(environ={"NIXFARM_DATA_DIR": str(data)}).port == 9100
    assert config.load(environ={}, overrides={"data_dir": str(data)}).port == 9100
    # A file named explicitly wins; the data directory's is not read then.
    named = tmp_path / "named.toml"
    named.write_text('listen = "127.0.0.1:9200"\n')
    assert config.load(named, environ={"NIXFARM_DATA_DIR": str(data)}).port == 9200
    assert config.load(environ={"NIXFARM_DATA_DIR": str(data),
                                "NIXFARM_CONFIG": str(named)}).port == 9200
    # It cannot move the data directory it was found in.
    (data / config.DEFAULT_FILE).write_text('data_dir = "/elsewhere"\n')
    with pytest.raises(ConfigError) as refused:
        config.load(environ={"NIXFARM_DATA_DIR": str(data)})
    assert refused.value.key == "data_dir" and "pass the file with --config" in str(refused.value)
    assert config.DEFAULT_DATA_DIR == Path("./data") == config.Settings().data_dir
