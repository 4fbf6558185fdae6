"""Shared fixtures live in tests/fixtures/; each is a pytest plugin listed here."""

from __future__ import annotations

from pathlib import Path

import pytest

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
