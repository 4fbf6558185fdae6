"""Fixtures for the runner tests: the demo catalogue image, built once with real nix."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import nixfarm.demo
from nixfarm.runner.roots import Catalogue, Images

NIX_OPTIONS = {"substituters": ""}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def built_images() -> Iterator[Path]:
    # Not under pytest's 0700 tmp dirs: the sandbox's host uid (nobody) must be able
    # to reach the image roots it mounts.
    built = Path(tempfile.mkdtemp(prefix="nixfarm-runner-images-"))
    built.chmod(0o755)
    yield built
    subprocess.run(["chmod", "-R", "u+w", built], check=False)
    shutil.rmtree(built, ignore_errors=True)


@pytest.fixture(scope="session")
def images(built_images: Path) -> Images:
    return Images(Catalogue(built_images), nix_source=nixfarm.demo.path(), nix_options=NIX_OPTIONS)


@pytest.fixture(scope="session")
def demo_root(images: Images) -> Path:
    catalogue = images.catalogue
    return anyio.run(catalogue.root, catalogue.find("demo/latest"))
