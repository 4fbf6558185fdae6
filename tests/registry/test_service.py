"""The registry service against real Nix and a real filesystem store, with the demo set."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

import nixfarm.demo
from nixfarm.errors import ConfigError, NotFound
from nixfarm.oci.manifest import DOCKER_MANIFEST, OCI_MANIFEST
from nixfarm.registry.compose import customisation
from nixfarm.registry.service import RegistryService
from nixfarm.storage.factory import open_store
from tests.registry.conftest import demo_settings

pytestmark = pytest.mark.anyio


async def test_name_order_does_not_matter_and_both_cache_tiers_answer(
        service: RegistryService) -> None:
    first = await service.manifest("hello/busybox", "latest", DOCKER_MANIFEST)
    second = await service.manifest("busybox/hello", "latest", DOCKER_MANIFEST)
    assert first == second
    assert service.builds.started == 1

    # A new process on the same storage: the manifest comes from the storage tier.
    again = RegistryService(service.settings, open_store(service.settings))
    third = await again.manifest("hello/busybox", "latest", DOCKER_MANIFEST)
    assert third == first
    assert again.builds.started == 0 and again.layers.written == 0

    oci = await again.manifest("hello/busybox", "latest", OCI_MANIFEST)
    assert oci.media_type == OCI_MANIFEST and oci.digest != first.digest
    for answer in (first, oci):  # both flavours can be pulled by digest
        by_digest = await again.manifest("anything", str(answer.digest), "")
        assert (by_digest.body, by_digest.media_type) == (answer.body, answer.media_type)


async def test_ten_concurrent_requests_build_once(service: RegistryService) -> None:
    answers = await asyncio.gather(*(
        service.manifest("cowsay/fortune", "latest", DOCKER_MANIFEST) for _ in range(10)))
    assert len({answer.digest for answer in answers}) == 1
    assert service.builds.started == 1
    image = await service.image("fortune/cowsay", "latest")
    assert service.layers.written == len(image.layers)


async def test_adding_a_package_reuses_the_shared_layers(service: RegistryService) -> None:
    small = await service.image("hello/busybox", "latest")
    written = service.layers.written
    big = await service.image("hello/busybox/tree", "latest")
    shared = set(small.layers[:-1]) & set(big.layers)
    assert shared == set(small.layers[:-1])  # every store-path layer is reused
    assert service.layers.written - written == len(big.layers) - len(shared)


async def test_unknown_packages_are_each_named(service: RegistryService) -> None:
    with pytest.raises(NotFound) as caught:
        await service.image("hello/nosuch/alsonot", "latest")
    assert caught.value.kind == "package"
    assert "'alsonot'" in caught.value.message and "'nosuch'" in caught.value.message
    [build] = service.builds.recent()
    assert build.state == "failed" and "'nosuch'" in build.message


async def test_no_source_is_a_clear_error(tmp_path: Path) -> None:
    settings = demo_settings(tmp_path, source={"kind": "none"})
    service = RegistryService(settings, open_store(settings))
    with pytest.raises(ConfigError, match="no package source"):
        await service.manifest("hello", "latest", "")


@pytest.fixture
def git_repo(tmp_path: Path) -> tuple[Path, str]:
    """The demo set committed to a fresh git repository; (its path, the commit)."""
    repo = tmp_path / "pkgs"
    shutil.copytree(nixfarm.demo.path(), repo, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "demo"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    return repo, commit


async def test_git_source_caches_commits_but_not_branches(
        tmp_path: Path, git_repo: tuple[Path, str]) -> None:
    repo, commit = git_repo
    settings = demo_settings(tmp_path / "data", source={"kind": "git",
                                                         "location": f"file://{repo}"})
    service = RegistryService(settings, open_store(settings))
    pinned = await service.image("hello", commit)
    assert await service.image("hello", commit) == pinned
    assert service.builds.started == 1
    moving = await service.image("hello", "main")
    await service.image("hello", "main")
    assert service.builds.started == 3  # a branch moves: built every time
    assert moving == pinned  # ...but the same tree still gives the same image


def test_customisation_layer_makes_a_usable_root(tmp_path: Path) -> None:
    busybox = tmp_path / "aaaa-busybox"
    (busybox / "bin").mkdir(parents=True)
    (busybox / "bin" / "busybox").write_text("")
    for applet in ("sh", "env"):
        (busybox / "bin" / applet).symlink_to("busybox")
    (busybox / "nix-support").mkdir()
    hello = tmp_path / "bbbb-hello"
    (hello / "bin").mkdir(parents=True)
    (hello / "bin" / "hello").write_text("")
    (hello / "share" / "doc").mkdir(parents=True)
    links, files, dirs, runtime = customisation([str(busybox), str(hello)])
    assert links["bin/hello"] == f"{hello}/bin/hello"
    assert links["bin/sh"] == f"{busybox}/bin/sh"
    assert links["usr/bin/env"] == f"{busybox}/bin/env"
    assert links["share"] == f"{hello}/share"
    assert "nix-support" not in links
    assert dirs["tmp"] == 0o1777 and dirs["bin"] == 0o755
    assert b"nobody:x:65534" in files["etc/passwd"][0]
    assert runtime.cmd == ("/bin/sh",)
    assert runtime.env == ("PATH=/bin:/sbin:/usr/bin",)
