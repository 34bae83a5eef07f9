"""Accounts: users, preferences, refresh tokens, one-time codes, mail outbox.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from segs.hub.db.types import ID_TYPE, UtcDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("user_preferences", "refresh_tokens", "one_time_codes", "users", "mail_outbox")


def _id(name: str, *, nullable: bool = False) -> sa.Column[str]:
    return sa.Column(name, ID_TYPE, nullable=nullable)


def _time(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, UtcDateTime(), nullable=nullable)


def _text(name: str, length: int, *, nullable: bool = False) -> sa.Column[str]:
    return sa.Column(name, sa.String(length=length), nullable=nullable)


def _flag(name: str) -> sa.Column[bool]:
    return sa.Column(name, sa.Boolean(), nullable=False)


def _user_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["user_id"], ["users.user_id"], name=op.f(f"fk_{table}_user_id_users")
    )


def upgrade() -> None:
    """Create the account tables."""
    op.create_table(
        "mail_outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
            autoincrement=True,
        ),
        _text("to_address", 254),
        _text("subject", 200),
        sa.Column("body", sa.Text(), nullable=False),
        _time("created_at"),
        _time("sent_at", nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mail_outbox")),
    )
    op.create_index(op.f("ix_mail_outbox_to_address"), "mail_outbox", ["to_address"])
    op.create_table(
        "users",
        _id("user_id"),
        _text("email", 254),
        _text("username", 32),
        _text("password_hash", 255),
        _text("role", 16),
        _id("region", nullable=True),
        _text("full_name", 200, nullable=True),
        _text("phone", 32, nullable=True),
        _text("status", 16),
        _flag("email_verified"),
        _flag("otp_login"),
        sa.Column("failed_logins", sa.Integer(), nullable=False),
        _time("locked_until", nullable=True),
        sa.Column("tokens_valid_after", sa.BigInteger(), nullable=False),
        _time("created_at"),
        _time("updated_at"),
        _time("last_login_at", nullable=True),
        sa.ForeignKeyConstraint(["region"], ["regions.name"], name=op.f("fk_users_region_regions")),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
    )
    op.create_table(
        "one_time_codes",
        _id("user_id"),
        _text("purpose", 16),
        _text("code_hash", 64),
        _time("expires_at"),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _time("created_at"),
        _user_fk("one_time_codes"),
        sa.PrimaryKeyConstraint("user_id", "purpose", name=op.f("pk_one_time_codes")),
    )
    op.create_table(
        "refresh_tokens",
        _text("token_hash", 64),
        _id("user_id"),
        _text("family_id", 36),
        _time("issued_at"),
        _time("expires_at"),
        _time("spent_at", nullable=True),
        _time("revoked_at", nullable=True),
        _user_fk("refresh_tokens"),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_refresh_tokens")),
    )
    op.create_index(op.f("ix_refresh_tokens_family_id"), "refresh_tokens", ["family_id"])
    op.create_index(op.f("ix_refresh_tokens_user_id"), "refresh_tokens", ["user_id"])
    op.create_table(
        "user_preferences",
        _id("user_id"),
        _flag("email_notifications"),
        _flag("sms_notifications"),
        _flag("websocket_notifications"),
        _text("alert_severity_threshold", 16),
        _time("updated_at"),
        _user_fk("user_preferences"),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_user_preferences")),
    )


def downgrade() -> None:
    """Drop the account tables (their data with them)."""
    for table in _TABLES:
        op.drop_table(table)
