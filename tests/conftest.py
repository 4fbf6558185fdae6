"""Shared fixtures live in tests/fixtures/; each is a pytest plugin listed here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nixfarm.runner.sandbox.processes import remove_tree
from nixfarm.runner.workdir import shadows_of

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.s3",
    "tests.fixtures.farm",
    "tests.fixtures.nixenv",
    "tests.fixtures.jobs",
    "tests.fixtures.redis",
    "tests.fixtures.proxy",
    "tests.fixtures.images",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--pristine", action="store_true",
                     help="run only the pristine-machine stage (tests/pristine: the README "
                          "on a fresh debootstrapped Debian 12); scripts/test runs it last")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # The pristine stage takes minutes and runs on its own, after everything else.
    pristine = Path(__file__).parent / "pristine"
    inside = collection_path == pristine or pristine in collection_path.parents
    if config.getoption("pristine"):
        return None if inside or collection_path in pristine.parents else True
    return True if inside else None


@pytest.fixture(scope="session", autouse=True)
def _runner_shadows_removed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Runners whose data dir is under pytest's 0700 tmp work under /var/tmp instead
    (runner_dir): remove those this session made (a thousand were left once)."""
    yield
    for shadow in shadows_of(tmp_path_factory.getbasetemp()):
        remove_tree(shadow)
