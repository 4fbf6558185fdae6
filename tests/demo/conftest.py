from pathlib import Path

import pytest

from tests.demo import nixcli
from tests.demo.nixcli import ORDINARY


@pytest.fixture(scope="session")
def built() -> dict[str, Path]:
    """The ordinary packages, built once per session (one nix-build, cached in the store)."""
    return dict(zip(ORDINARY, nixcli.build_paths(*ORDINARY), strict=True))
