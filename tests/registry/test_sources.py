"""Package sources: cache keys only for targets that cannot move; start-up checks."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from nixfarm.config import SourceSettings
from nixfarm.errors import ConfigError
from nixfarm.registry import sources
from nixfarm.registry.sources import PackageSource, check, content_hash

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _tree(root: Path) -> Path:
    (root / "pkgs").mkdir(parents=True)
    (root / "default.nix").write_text("{ }\n")
    (root / "pkgs" / "a.nix").write_text("1\n")
    return root


def test_content_hash_follows_content_not_times(tmp_path: Path) -> None:
    root = _tree(tmp_path / "src")
    first = content_hash(root)
    os.utime(root / "pkgs" / "a.nix", (1, 1))
    assert content_hash(root) == first
    (root / "pkgs" / "a.nix").write_text("2\n")
    assert content_hash(root) != first
    (root / "pkgs" / "a.nix").write_text("1\n")
    (root / "pkgs" / "a.nix").chmod(0o755)
    assert content_hash(root) != first


@pytest.mark.anyio
async def test_path_source_is_keyed_by_content(tmp_path: Path) -> None:
    root = _tree(tmp_path / "src")
    source = PackageSource(SourceSettings(kind="path", location=str(root)))
    first = await source.resolve("latest")
    assert first.cache_key is not None
    assert (await source.resolve("other")).cache_key == first.cache_key
    (root / "default.nix").write_text("{ x = 1; }\n")
    # Remembered for PATH_RECHECK_SECONDS (a warm pull does not walk the tree), then seen.
    assert (await source.resolve("latest")).cache_key == first.cache_key
    await anyio.sleep(sources.PATH_RECHECK_SECONDS + 0.1)
    assert (await source.resolve("latest")).cache_key != first.cache_key


@pytest.mark.anyio
async def test_git_source_caches_commits_only() -> None:
    source = PackageSource(SourceSettings(kind="git", location="https://example.org/pkgs.git"))
    commit = await source.resolve(COMMIT)
    assert commit.cache_key is not None and commit.spec["rev"] == COMMIT
    branch = await source.resolve("release-24")
    assert branch.cache_key is None and branch.spec["ref"] == "release-24"
    latest = await source.resolve("latest")
    assert latest.cache_key is None and latest.spec["ref"] == ""


@pytest.mark.anyio
async def test_channel_is_cached_only_when_pinned() -> None:
    url = "https://example.org/nixexprs.tar.xz"
    moving = PackageSource(SourceSettings(kind="channel", location=url))
    assert (await moving.resolve("latest")).cache_key is None
    pinned = PackageSource(SourceSettings(kind="channel", location=url, sha256="0" * 52))
    assert (await pinned.resolve("latest")).cache_key is not None


def test_bad_sources_are_config_errors(tmp_path: Path) -> None:
    check(SourceSettings())  # none configured is fine: /v2 says so per request
    with pytest.raises(ConfigError, match="not a directory"):
        check(SourceSettings(kind="path", location=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match="absolute"):
        check(SourceSettings(kind="path", location="relative/dir"))
    with pytest.raises(ConfigError, match="not a URL"):
        check(SourceSettings(kind="channel", location="nixos-unstable"))
    with pytest.raises(ConfigError, match="relative path"):
        check(SourceSettings(kind="path", location=str(_tree(tmp_path / "s")), entry="../x"))
