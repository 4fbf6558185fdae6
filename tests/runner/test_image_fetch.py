"""``imaging.fetch_job_build``, the checks of a job's image before it is installed (by
``nixfarm image install --from-job`` and by a runner's image updates): the files must
have the size and SHA-256 the server took at upload, and, for a runner, its own recipe
hash. The server is replaced by what it would send (the HTTP edge); the files are real.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from nixfarm import images
from nixfarm.runner import imaging
from nixfarm.wire.jobs import ArtifactOut

IMAGE = b"QFI\xfb a qcow2, as far as this test goes\n"
WHEN = datetime(2026, 12, 3, 17, 20, 5, tzinfo=UTC)


def recipe(where: Path) -> images.Recipe:
    release = where / "recipes/tiny/1/x86_64"
    release.mkdir(parents=True)
    (release / "image.toml").write_text('kind = "disk"\n')
    (release / "functions").write_text("sanity_check() {\n\ttrue\n}\n")
    return images.find(where / "recipes", "tiny/1")


def served(files: dict[str, bytes], sent: dict[str, bytes] | None = None
           ) -> tuple[dict[str, ArtifactOut], imaging.Download]:
    """Artifacts as the server lists them (of ``files``) and a download that sends
    ``sent`` (what arrives: ``files`` unless changed on the way)."""
    arriving = {**files, **(sent or {})}
    listed = {name: ArtifactOut(name=name, path=f"out/{name}", size=len(data),
                                url=f"http://farm/{name}", created_at=WHEN,
                                sha256=hashlib.sha256(data).hexdigest())
              for name, data in files.items()}

    async def download(url: str, dest: Path) -> int:
        data = arriving[url.rsplit("/", 1)[1]]
        await anyio.Path(dest).write_bytes(data)
        return len(data)

    return listed, download


def fetch(r: images.Recipe, builds: Path, files: dict[str, bytes],
          sent: dict[str, bytes] | None = None, same_recipe: bool = True) -> tuple[Path, str]:
    listed, download = served(files, sent)

    async def go() -> tuple[Path, str]:
        return await imaging.fetch_job_build(7, WHEN, listed, r, builds, download,
                                             same_recipe=same_recipe)

    return anyio.run(go)


def test_a_good_build_is_named_by_its_recipe_and_job(tmp_path: Path) -> None:
    r = recipe(tmp_path)
    digest = images.recipe_hash(r)
    built, got = fetch(r, tmp_path / "builds", {images.DISK_FILE: IMAGE,
                                                images.HASH_FILE: f"{digest}\n".encode()})
    assert got == digest
    assert built == tmp_path / "builds" / f"tiny-1-x86_64-{digest}-job7"
    assert (built / images.DISK_FILE).read_bytes() == IMAGE
    assert (built / images.BUILD_JOB_FILE).read_text() == f"7 {WHEN.isoformat()}\n"
    assert [p.name for p in (tmp_path / "builds").iterdir()] == [built.name]  # no staging


def test_an_image_changed_on_the_way_is_refused(tmp_path: Path) -> None:
    r = recipe(tmp_path)
    digest = f"{images.recipe_hash(r)}\n".encode()
    flipped = bytes([IMAGE[0] ^ 1]) + IMAGE[1:]  # same size, one bit off
    with pytest.raises(images.ImageError, match=r"root.img.qcow2 of job 7 is corrupt: its "
                                                r"SHA-256 is [0-9a-f]{64}, the server took"):
        fetch(r, tmp_path / "builds", {images.DISK_FILE: IMAGE, images.HASH_FILE: digest},
              sent={images.DISK_FILE: flipped})
    with pytest.raises(images.ImageError, match="came short: 5 of"):
        fetch(r, tmp_path / "builds", {images.DISK_FILE: IMAGE, images.HASH_FILE: digest},
              sent={images.DISK_FILE: IMAGE[:5]})
    assert list((tmp_path / "builds").iterdir()) == []  # nothing of them is kept


def test_a_runner_refuses_a_build_of_another_recipe(tmp_path: Path) -> None:
    r = recipe(tmp_path)
    other = {images.DISK_FILE: IMAGE, images.HASH_FILE: b"0123456789abcdef0123456789abcdef\n"}
    with pytest.raises(images.ImageError, match="from another recipe"):
        fetch(r, tmp_path / "builds", other)
    # `image install --from-job` takes it, and says so (cli/image.py).
    _, digest = fetch(r, tmp_path / "builds", other, same_recipe=False)
    assert digest == "0123456789abcdef0123456789abcdef"
    with pytest.raises(images.ImageError, match="is not a recipe hash"):
        fetch(r, tmp_path / "other", {images.DISK_FILE: IMAGE, images.HASH_FILE: b"../x\n"})
    with pytest.raises(images.ImageError, match=r"has no artifact root\.img\.qcow2"):
        fetch(r, tmp_path / "other", {images.HASH_FILE: b"0" * 32})
