"""The database: typed models, one query module per aggregate, Alembic migrations.

``engine.Database`` is the async handle the server uses; ``engine.migrate`` brings a
schema up to date at start-up. Query functions take an ``AsyncSession`` first and
raise the errors of ``nixfarm.errors``.
"""
