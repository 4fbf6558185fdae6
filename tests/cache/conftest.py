"""Fixtures of the cache service tests: a real CacheService on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
