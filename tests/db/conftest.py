import pytest

# The PostgreSQL/SQLite fixtures (db, db_url, postgres_url) come from
# tests.fixtures.postgres, registered as a plugin in tests/conftest.py.


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
