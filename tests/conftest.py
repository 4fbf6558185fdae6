"""Shared fixtures live in tests/fixtures/; each is a pytest plugin listed here."""

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.s3",
    "tests.fixtures.farm",
    "tests.fixtures.nixenv",
    "tests.fixtures.jobs",
    "tests.fixtures.redis",
]
