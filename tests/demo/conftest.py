from pathlib import Path

import pytest

from tests.demo import nixcli

# Every package that builds; broken, slow and bigdata have tests of their own.
ORDINARY = (
    "busybox",
    "hello",
    "libgreeting",
    "greet",
    "cowsay",
    "banner-font",
    "banner",
    "fortunes",
    "fortune",
    "tree",
    "motd",
    "bashInteractive",
    "coreutils",
    "nano",
    "moreutils",
)


@pytest.fixture(scope="session")
def built() -> dict[str, Path]:
    """The ordinary packages, built once per session (one nix-build, cached in the store)."""
    return dict(zip(ORDINARY, nixcli.build_paths(*ORDINARY), strict=True))
