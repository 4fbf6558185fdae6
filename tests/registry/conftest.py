"""Fixtures for the registry tests: a RegistryService on the demo set with real Nix."""

from __future__ import annotations

from pathlib import Path

import pytest

import nixfarm.demo
from nixfarm import config
from nixfarm.config import Settings
from nixfarm.registry.service import RegistryService
from nixfarm.storage.factory import open_store


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def demo_settings(data_dir: Path, **registry: object) -> Settings:
    return config.load(environ={}, overrides={
        "data_dir": str(data_dir),
        "nix_options": {"substituters": ""},
        "registry": {"source": {"kind": "path", "location": str(nixfarm.demo.path())},
                     **registry},
    })


@pytest.fixture
def service(tmp_path: Path) -> RegistryService:
    settings = demo_settings(tmp_path / "data")
    return RegistryService(settings, open_store(settings))
