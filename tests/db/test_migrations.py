"""The migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

import subprocess
import sys

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from nixfarm.db.engine import alembic_config, migrate, sync_url
from nixfarm.db.models import Base


def _diff(url: str) -> list[object]:
    engine = sa.create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def test_models_and_migrations_agree(db_url: str) -> None:
    assert _diff(db_url) == []


def test_migrate_is_idempotent(db_url: str) -> None:
    migrate(db_url)
    assert _diff(db_url) == []


def test_concurrent_migrations(empty_db_url: str) -> None:
    # Servers starting at once against one database: each migrates, all succeed.
    code = "import sys; from nixfarm.db.engine import migrate; migrate(sys.argv[1])"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, empty_db_url], stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    for proc in procs:
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr.decode()
    assert _diff(empty_db_url) == []


def test_empty_database_differs(empty_db_url: str) -> None:
    # The comparison is not vacuous: with no migrations run, every table is missing.
    added = {d[1].name for d in _diff(empty_db_url) if isinstance(d, tuple) and d[0] == "add_table"}
    assert added == set(Base.metadata.tables)


def test_downgrade_to_nothing(db_url: str) -> None:
    engine = sa.create_engine(sync_url(db_url))
    try:
        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, "base")
        assert set(sa.inspect(engine).get_table_names()) == {"alembic_version"}
    finally:
        engine.dispose()
    migrate(db_url)
    assert _diff(db_url) == []
