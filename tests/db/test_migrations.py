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


def test_job_cache_is_filled_in_from_manifests(empty_db_url: str) -> None:
    # Jobs submitted before jobs.cache existed get the cache their manifest names.
    migrate(empty_db_url, "0006_shell_schedules")
    manifests = {
        1: "image: nix\ncache: main\ntasks:\n  - a: make\n",
        2: "image: nix\ntasks:\n  - a: make  # no cache here\n",
        3: "image: nix\ntasks:\n  - a: \"echo cache: not-a-key\"\n",
        4: "image: [broken\n",
    }
    engine = sa.create_engine(sync_url(empty_db_url))
    try:
        with engine.begin() as conn:
            for job_id, text in manifests.items():
                conn.execute(sa.text(
                    "INSERT INTO jobs (id, owner_id, owner_name, status, manifest, image,"
                    " visibility, secret_ids, timeout_seconds, attempts, stop_requested,"
                    " created_at) VALUES (:id, 1, 'alice', 'queued', :manifest, 'nix',"
                    " 'public', '[]', 60, 0, false, CURRENT_TIMESTAMP)"),
                    {"id": job_id, "manifest": text})
        migrate(empty_db_url)
        with engine.connect() as conn:
            rows = {int(job_id): cache for job_id, cache in conn.execute(
                sa.text("SELECT id, cache FROM jobs ORDER BY id"))}
    finally:
        engine.dispose()
    assert rows == {1: "main", 2: None, 3: None, 4: None}
