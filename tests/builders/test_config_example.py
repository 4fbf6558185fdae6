"""The builder sections of docs/config.example.toml, the commented pool included, are
valid settings; and bad pools are refused with their key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from nixfarm import config
from nixfarm.errors import ConfigError

EXAMPLE = Path(__file__).parents[2] / "docs" / "config.example.toml"


def test_the_example_pool_is_valid(tmp_path: Path) -> None:
    lines = EXAMPLE.read_text().splitlines()
    start = lines.index("# [[builders.pools]]")
    pool = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        pool.append(line.removeprefix("# "))
    f = tmp_path / "farm.toml"
    f.write_text(EXAMPLE.read_text() + "\n" + "\n".join(pool) + "\n")
    s = config.load(f, environ={})
    [release] = s.builders.pools
    assert release.name == "release" and release.max_hourly_spend == 0.06
    assert release.caches == ("spectrum",) and release.lifecycle == "destroy-after-job"


@pytest.mark.parametrize(("pool", "words"), [
    ({"name": "Bad Name", "provider": "vultr"}, "builders.pools.0.name"),
    ({"name": "p", "provider": "aws"}, "builders.pools.0.provider"),
    ({"name": "p", "provider": "vultr", "max_hourly_spend": 1}, "needs hourly_price"),
    ({"name": "p", "provider": "vultr", "lifecycle": "forever"}, "lifecycle"),
    ({"name": "p", "provider": "vultr", "job_images": []}, "job_images"),
    ({"name": "p", "provider": "vultr", "colour": "red"}, "unknown setting"),
])
def test_bad_pools_are_named(pool: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config.load(environ={}, overrides={"builders": {"pools": [pool]}})
    assert words in caught.value.message, caught.value.message


def test_pool_names_are_unique() -> None:
    with pytest.raises(ConfigError, match="two pools are called 'p'"):
        config.load(environ={}, overrides={"builders": {"pools": [
            {"name": "p", "provider": "vultr"}, {"name": "p", "provider": "vultr"}]}})
