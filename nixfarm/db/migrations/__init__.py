"""Alembic migrations (a package so that they ship with nixfarm)."""
