"""Alembic revision files, applied in order by :func:`segs.hub.db.migrate.migrate`."""
