"""Shared fixtures live in tests/fixtures/; each is a pytest plugin listed here."""

pytest_plugins: list[str] = []
