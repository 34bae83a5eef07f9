"""Alembic migrations of the hub's schema; run them with ``segs hub migrate``."""
