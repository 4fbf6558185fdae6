"""The event bus tests are async; ``redis_url`` comes from tests/fixtures/redis.py."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
