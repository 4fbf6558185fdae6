"""INSERT ... ON CONFLICT, for whichever database the session is on.

SQLite and PostgreSQL spell it the same way and SQLAlchemy has a construct for each;
an upsert is one atomic statement, so two requests storing the same NAR or path at
the same moment cannot both insert, and neither has to catch an error and retry.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession


def insert(session: AsyncSession, table: Any) -> sqlite.Insert | postgresql.Insert:
    """An INSERT into ``table`` (a model or Table) supporting ``on_conflict_do_*``."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)
