"""``/api/v1/users``: the signed-in user's profile and notification preferences."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, Field, StringConstraints
from sqlmodel import select

from segs.hub.accounts import USERNAME_PATTERN
from segs.hub.api.deps import ContextDep, CurrentUser, SessionDep
from segs.hub.api.errors import ApiError, error_responses
from segs.hub.api.routes.auth import FullName, Phone, UserPublic, user_public
from segs.hub.db import Severity, User, UserPreferences

__all__ = ["router"]

router = APIRouter(prefix="/users", tags=["users"])


class UserUpdate(BaseModel):
    """Profile fields to change; those left out stay as they are."""

    username: Annotated[str, StringConstraints(pattern=USERNAME_PATTERN)] | None = None
    full_name: FullName | None = None
    phone: Phone | None = None
    otp_login: bool | None = Field(default=None, description="ask a mailed code at sign-in")


class Preferences(BaseModel):
    """How the user wants to be notified (the seed's ``user_preferences``)."""

    email_notifications: bool
    sms_notifications: bool
    websocket_notifications: bool
    alert_severity_threshold: Severity = Field(
        description="alerts below this severity are not notified"
    )
    updated_at: datetime


class PreferencesUpdate(BaseModel):
    """Preferences to change; those left out stay as they are."""

    email_notifications: bool | None = None
    sms_notifications: bool | None = None
    websocket_notifications: bool | None = None
    alert_severity_threshold: Severity | None = None


@router.get("/me", responses=error_responses(401), summary="My profile")
def get_me(user: CurrentUser, session: SessionDep) -> UserPublic:
    """The signed-in user's profile."""
    return user_public(session, user)


@router.put("/me", responses=error_responses(401, 409, 422), summary="Update my profile")
def put_me(
    body: UserUpdate, user: CurrentUser, context: ContextDep, session: SessionDep
) -> UserPublic:
    """Change the profile fields given; a username another account has answers 409."""
    changes = body.model_dump(exclude_unset=True)
    if changes.get("username") not in (None, user.username):
        taken = session.exec(
            select(User.user_id).where(User.username == changes["username"])
        ).first()
        if taken is not None:
            raise ApiError(409, f"username {changes['username']!r} is taken")
    for name, value in changes.items():
        if value is not None or name in {"full_name", "phone"}:
            setattr(user, name, value)
    user.updated_at = context.clock()
    session.add(user)
    session.commit()
    return user_public(session, user)


def _preferences(session: SessionDep, user: User, now: datetime) -> UserPreferences:
    row = session.get(UserPreferences, user.user_id)
    return row if row is not None else UserPreferences(user_id=user.user_id, updated_at=now)


def _public(row: UserPreferences) -> Preferences:
    return Preferences(
        email_notifications=row.email_notifications,
        sms_notifications=row.sms_notifications,
        websocket_notifications=row.websocket_notifications,
        alert_severity_threshold=Severity(row.alert_severity_threshold),
        updated_at=row.updated_at,
    )


@router.get(
    "/me/preferences", responses=error_responses(401), summary="My notification preferences"
)
def get_preferences(user: CurrentUser, context: ContextDep, session: SessionDep) -> Preferences:
    """The signed-in user's notification preferences."""
    return _public(_preferences(session, user, context.clock()))


@router.put(
    "/me/preferences",
    responses=error_responses(401, 422),
    summary="Update my notification preferences",
)
def put_preferences(
    body: PreferencesUpdate, user: CurrentUser, context: ContextDep, session: SessionDep
) -> Preferences:
    """Change the preferences given."""
    row = _preferences(session, user, context.clock())
    for name, value in body.model_dump(exclude_unset=True, exclude_none=True).items():
        setattr(row, name, value.value if isinstance(value, Severity) else value)
    row.updated_at = context.clock()
    session.add(row)
    session.commit()
    return _public(row)
