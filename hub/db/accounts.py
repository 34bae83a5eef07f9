"""Accounts: users, their preferences, refresh tokens, one-time codes and the mail outbox.

A user's meters are the registry's meters whose ``customer_id`` is the user's
``user_id``: the registry stays the one place that says who owns a meter.
Roles and statuses are stored lowercase, as the tokens carry them.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, Integer, Text
from sqlmodel import Field, SQLModel

from segs.hub.db.types import ID_TYPE, UtcDateTime, utc_now

__all__ = [
    "MailMessage",
    "OneTimeCode",
    "OtpPurpose",
    "RefreshToken",
    "Role",
    "Severity",
    "User",
    "UserPreferences",
    "UserStatus",
]


class Role(StrEnum):
    """What a user may do: ``operator`` is scoped to its region, ``admin`` to everything."""

    USER = "user"
    OPERATOR = "operator"
    ADMIN = "admin"


class UserStatus(StrEnum):
    """``pending`` until the email is verified; ``suspended`` accounts cannot sign in."""

    PENDING = "pending"
    ACTIVE = "active"
    SUSPENDED = "suspended"


class OtpPurpose(StrEnum):
    """What a one-time code proves."""

    VERIFY_EMAIL = "verify_email"
    RESET_PASSWORD = "reset_password"  # noqa: S105 - a purpose, not a password
    LOGIN = "login"


class Severity(StrEnum):
    """Alert severities, lowest first (the preferences' threshold)."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


_BIG_ID = BigInteger().with_variant(Integer(), "sqlite")


class User(SQLModel, table=True):
    """``users``."""

    __tablename__ = "users"

    user_id: str = Field(primary_key=True, max_length=64, sa_type=ID_TYPE)
    email: str = Field(unique=True, max_length=254, description="lowercase")
    username: str = Field(unique=True, max_length=32)
    password_hash: str = Field(max_length=255)
    role: str = Field(default=Role.USER.value, max_length=16)
    region: str | None = Field(
        default=None, foreign_key="regions.name", max_length=64, sa_type=ID_TYPE
    )
    full_name: str | None = Field(default=None, max_length=200)
    phone: str | None = Field(default=None, max_length=32)
    status: str = Field(default=UserStatus.PENDING.value, max_length=16)
    email_verified: bool = False
    otp_login: bool = Field(default=False, description="one-time code as a second factor")
    failed_logins: int = 0
    locked_until: datetime | None = Field(default=None, sa_type=UtcDateTime)
    tokens_valid_after: int = Field(
        default=0,
        sa_type=BigInteger,
        description="Unix second: access tokens issued before it are refused "
        "(password change, reset, suspension)",
    )
    created_at: datetime = Field(default_factory=utc_now, sa_type=UtcDateTime)
    updated_at: datetime = Field(default_factory=utc_now, sa_type=UtcDateTime)
    last_login_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class UserPreferences(SQLModel, table=True):
    """``user_preferences``: how a user wants to be notified (the seed's table)."""

    __tablename__ = "user_preferences"

    user_id: str = Field(
        primary_key=True, foreign_key="users.user_id", max_length=64, sa_type=ID_TYPE
    )
    email_notifications: bool = True
    sms_notifications: bool = False
    websocket_notifications: bool = True
    alert_severity_threshold: str = Field(default=Severity.LOW.value, max_length=16)
    updated_at: datetime = Field(default_factory=utc_now, sa_type=UtcDateTime)


class RefreshToken(SQLModel, table=True):
    """``refresh_tokens``: opaque tokens, stored as SHA-256 hashes, rotated on every use.

    Every login starts a family; each refresh spends one token and issues the
    next in the same family. Presenting a spent token revokes the whole family.
    """

    __tablename__ = "refresh_tokens"

    token_hash: str = Field(primary_key=True, max_length=64)
    user_id: str = Field(foreign_key="users.user_id", index=True, max_length=64, sa_type=ID_TYPE)
    family_id: str = Field(index=True, max_length=36)
    issued_at: datetime = Field(default_factory=utc_now, sa_type=UtcDateTime)
    expires_at: datetime = Field(sa_type=UtcDateTime)
    spent_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class OneTimeCode(SQLModel, table=True):
    """``one_time_codes``: the latest code per user and purpose, hashed, with its attempts."""

    __tablename__ = "one_time_codes"

    user_id: str = Field(
        primary_key=True, foreign_key="users.user_id", max_length=64, sa_type=ID_TYPE
    )
    purpose: str = Field(primary_key=True, max_length=16)
    code_hash: str = Field(max_length=64)
    expires_at: datetime = Field(sa_type=UtcDateTime)
    attempts: int = 0
    created_at: datetime = Field(default_factory=utc_now, sa_type=UtcDateTime)


class MailMessage(SQLModel, table=True):
    """``mail_outbox``: every mail the hub sends, kept; SMTP delivery marks ``sent_at``."""

    __tablename__ = "mail_outbox"

    id: int | None = Field(default=None, primary_key=True, sa_type=_BIG_ID)
    to_address: str = Field(max_length=254, index=True)
    subject: str = Field(max_length=200)
    body: str = Field(sa_type=Text)
    created_at: datetime = Field(default_factory=utc_now, sa_type=UtcDateTime)
    sent_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    attempts: int = 0
    last_error: str | None = Field(default=None, sa_type=Text)
