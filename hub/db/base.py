"""The metadata every table model shares, with a constraint naming convention.

Named constraints make Alembic migrations identical on PostgreSQL and SQLite.
"""

from __future__ import annotations

from typing import Final

from sqlmodel import SQLModel

__all__ = ["NAMING_CONVENTION", "metadata"]

NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = SQLModel.metadata
metadata.naming_convention = NAMING_CONVENTION
