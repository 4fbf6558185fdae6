"""Each prerequisite check against the real thing: Nix, nginx, bubblewrap, PostgreSQL, Redis."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from nixfarm import prerequisites
from nixfarm.config import Settings, load
from nixfarm.errors import PrerequisiteMissing
from tests.fixtures.farm import free_port


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    return load(None, environ={}, overrides={"data_dir": str(tmp_path / "data"), **overrides})


@pytest.fixture
def missing_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Nix configured, as Debian's nix-bin leaves it, with a build group that does not exist."""
    group = "nixfarm-no-such-group"
    conf = tmp_path / "nixconf"
    conf.mkdir()
    (conf / "nix.conf").write_text(f"build-users-group = {group}\nsandbox = true\n")
    monkeypatch.setenv("NIX_CONF_DIR", str(conf))
    return group


def test_nix_builds_in_its_sandbox_on_this_host() -> None:
    found = anyio.run(prerequisites.nix, {})
    assert found.ok, found.sentence()
    assert "sandbox" in found.detail


def test_nix_without_its_build_group_names_the_group_and_the_fix(missing_group: str) -> None:
    found = anyio.run(prerequisites.nix, {})
    assert not found.ok
    assert missing_group in found.detail
    assert "scripts/setup-nix" in found.fix and "nixbld group" in found.fix


def test_nix_not_installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    found = anyio.run(prerequisites.nix, {})
    assert not found.ok and "not installed" in found.detail and "scripts/setup" in found.fix


def test_nginx_missing_is_fatal_only_when_asked_for(tmp_path: Path) -> None:
    asked = _settings(tmp_path, edge={"server": "nginx", "nginx": "nginx-not-here"})
    found = anyio.run(prerequisites.nginx, asked)
    assert not found.ok and found.required
    assert "'nginx-not-here' is not installed" in found.detail
    assert "apt-get install nginx" in found.fix
    auto = _settings(tmp_path, edge={"server": "auto", "nginx": "nginx-not-here"})
    found = anyio.run(prerequisites.nginx, auto)
    assert not found.ok and not found.required
    assert anyio.run(prerequisites.nginx, _settings(tmp_path)).ok


def test_bubblewrap_makes_namespaces_here_and_is_named_when_missing(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert anyio.run(prerequisites.bubblewrap).ok
    monkeypatch.setenv("PATH", str(tmp_path))
    found = anyio.run(prerequisites.bubblewrap)
    assert not found.ok and "bwrap" in found.detail and "bubblewrap" in found.fix


def test_unreachable_database_is_named(tmp_path: Path) -> None:
    url = f"postgresql://nixfarm:secret@127.0.0.1:{free_port()}/nixfarm"
    found = anyio.run(prerequisites.database, _settings(tmp_path, database_url=url))
    assert not found.ok
    assert "Connection refused" in found.detail
    assert "secret" not in found.detail  # the password is never printed
    assert "database_url" in found.fix


@pytest.mark.postgres
def test_database_with_a_missing_role_is_named(tmp_path: Path, postgres_url: str) -> None:
    from sqlalchemy.engine import make_url

    server = make_url(postgres_url)
    url = server.set(username="nixfarm_no_such_role", password=None, database="postgres")
    found = anyio.run(prerequisites.database,
                      _settings(tmp_path, database_url=url.render_as_string(False)))
    assert not found.ok and "nixfarm_no_such_role" in found.detail
    assert anyio.run(prerequisites.database, _settings(tmp_path, database_url=postgres_url)).ok


def test_redis_unreachable_and_reachable(tmp_path: Path, redis_url: str) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    found = anyio.run(prerequisites.redis, _settings(tmp_path, redis_url=dead))
    assert not found.ok and dead in found.detail and "redis" in found.fix
    assert anyio.run(prerequisites.redis, _settings(tmp_path, redis_url=redis_url)).ok


def test_data_dir_that_cannot_be_made(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    found = anyio.run(prerequisites.data_dir, load(None, environ={}, overrides={
        "data_dir": str(blocker / "data")}))
    assert not found.ok and str(blocker / "data") in found.detail and "--data-dir" in found.fix


def test_require_raises_the_first_missing_piece_as_one_sentence(missing_group: str,
                                                                tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with pytest.raises(PrerequisiteMissing) as caught:
        prerequisites.require("up", prerequisites.for_server(settings, runner=True))
    message = caught.value.message
    assert message.startswith("nixfarm up cannot start: Nix could not build")
    assert "\n" not in message and caught.value.check == "nix"
    # A server without a package source or runner does not need Nix at all.
    prerequisites.require("server", prerequisites.for_server(settings, runner=False))
