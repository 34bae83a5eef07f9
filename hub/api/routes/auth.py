"""``/api/v1/auth``: registration, email verification, sign-in, tokens and passwords."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Request, Response, status
from pydantic import BaseModel, EmailStr, Field, StringConstraints
from sqlmodel import Session

from segs.hub.accounts import (
    USERNAME_PATTERN,
    AccountError,
    Accounts,
    InvalidCredentialsError,
    TokenPair,
    normalize_email,
)
from segs.hub.api.deps import ContextDep, CurrentUser, SessionDep
from segs.hub.api.errors import ApiError, error_responses
from segs.hub.db import User

__all__ = ["UserPublic", "router", "user_public"]

router = APIRouter(prefix="/auth", tags=["auth"])

Otp = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[0-9]{6}$")]
Password = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
NewPassword = Annotated[
    str, Field(min_length=1, max_length=1024, description="see the password policy in the docs")
]
Username = Annotated[str, StringConstraints(pattern=USERNAME_PATTERN)]
Phone = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^\+?[0-9 ()-]{4,31}$")]
FullName = Annotated[str, StringConstraints(max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")]
"""Free text without control characters (PostgreSQL text cannot hold NUL)."""
RefreshTokenValue = Annotated[str, StringConstraints(min_length=1, max_length=512)]


class RegisterRequest(BaseModel):
    """A new account."""

    email: EmailStr
    username: Username
    password: NewPassword
    full_name: FullName | None = None
    phone: Phone | None = None


class VerifyOtpRequest(BaseModel):
    """An email and the six-digit code mailed to it."""

    email: EmailStr
    otp: Otp


class EmailRequest(BaseModel):
    """An email address."""

    email: EmailStr


class LoginRequest(BaseModel):
    """Credentials, and the mailed sign-in code when the account asks for one."""

    email: EmailStr
    password: Password
    otp: Otp | None = None


class RefreshRequest(BaseModel):
    """A refresh token from ``login`` or ``refresh``."""

    refresh_token: RefreshTokenValue


class ResetPasswordRequest(BaseModel):
    """A new password with the reset code from ``forgot-password``."""

    email: EmailStr
    otp: Otp
    new_password: NewPassword


class ChangePasswordRequest(BaseModel):
    """The current password and the new one."""

    current_password: Password
    new_password: NewPassword


class TokenResponse(BaseModel):
    """An access token (a JWT, ``expires_in`` seconds) and an opaque refresh token."""

    access_token: str
    refresh_token: str
    token_type: str = Field(description="always 'bearer'")
    expires_in: int = Field(description="seconds until the access token expires")


class MessageResponse(BaseModel):
    """An acknowledgement in words."""

    message: str


class UserPublic(BaseModel):
    """An account as its owner (and admins) see it."""

    user_id: str
    email: str
    username: str
    role: str = Field(description="user, operator or admin")
    region: str | None
    meter_id: str | None = Field(description="the meter linked to this account")
    full_name: str | None
    phone: str | None
    status: str = Field(description="pending, active or suspended")
    email_verified: bool
    otp_login: bool = Field(description="a mailed code is asked at sign-in")
    created_at: datetime
    last_login_at: datetime | None


def user_public(session: Session, user: User) -> UserPublic:
    """The public view of ``user``."""
    return UserPublic(
        user_id=user.user_id,
        email=user.email,
        username=user.username,
        role=user.role,
        region=user.region,
        meter_id=Accounts.meter_of(session, user.user_id),
        full_name=user.full_name,
        phone=user.phone,
        status=user.status,
        email_verified=user.email_verified,
        otp_login=user.otp_login,
        created_at=user.created_at,
        last_login_at=user.last_login_at,
    )


@contextmanager
def _transaction(session: Session) -> Iterator[None]:
    """Commit what the account rules did, also when they refused (failed-attempt counts,
    revoked token families and mailed codes must be kept)."""
    try:
        yield
    except AccountError:
        session.commit()
        raise
    session.commit()


def _tokens(pair: TokenPair) -> TokenResponse:
    return TokenResponse(
        access_token=pair.access_token,
        refresh_token=pair.refresh_token,
        token_type=pair.token_type,
        expires_in=pair.expires_in,
    )


_SENT = "if the address can receive one, a code is on its way; it expires in a few minutes"


@router.post(
    "/register",
    status_code=status.HTTP_202_ACCEPTED,
    responses=error_responses(409, 422),
    summary="Create an account; a verification code is mailed",
)
def register(body: RegisterRequest, context: ContextDep, session: SessionDep) -> MessageResponse:
    """Create a pending account and mail a six-digit code to verify the email.

    The answer is the same whether or not the email already has an account.
    """
    with _transaction(session):
        context.accounts.register(
            session,
            email=body.email,
            username=body.username,
            password=body.password,
            full_name=body.full_name,
            phone=body.phone,
        )
    return MessageResponse(message=f"check your email to verify the account: {_SENT}")


@router.post(
    "/verify-otp",
    responses=error_responses(400, 422),
    summary="Verify the email with the mailed code",
)
def verify_otp(body: VerifyOtpRequest, context: ContextDep, session: SessionDep) -> MessageResponse:
    """Activate the account whose email received ``otp``."""
    with _transaction(session):
        context.accounts.verify_email(session, email=body.email, otp=body.otp)
    return MessageResponse(message="email verified; you can sign in")


@router.post(
    "/resend-otp",
    status_code=status.HTTP_202_ACCEPTED,
    responses=error_responses(422),
    summary="Mail a new verification code",
)
def resend_otp(body: EmailRequest, context: ContextDep, session: SessionDep) -> MessageResponse:
    """Mail a fresh verification code to an account not verified yet."""
    with _transaction(session):
        context.accounts.resend_code(session, email=body.email)
    return MessageResponse(message=_SENT)


@router.post(
    "/login",
    responses=error_responses(401, 403, 422, 429),
    summary="Sign in: an access token and a refresh token",
)
def login(
    body: LoginRequest, request: Request, context: ContextDep, session: SessionDep
) -> TokenResponse:
    """Sign in with email and password (and ``otp`` when the account asks for a code:
    the first attempt without it answers 401 ``otp_required`` and mails the code)."""
    email = normalize_email(body.email)
    address = request.client.host if request.client else "unknown"
    throttle = context.throttle
    if not throttle.attempt(address) or throttle.email_blocked(email):
        raise ApiError(
            429,
            "too many sign-in attempts; try again later",
            code="too_many_attempts",
            headers={"Retry-After": "60"},
        )
    try:
        with _transaction(session):
            pair = context.accounts.login(
                session, email=email, password=body.password, otp=body.otp
            )
    except InvalidCredentialsError:
        throttle.failed(email)
        raise
    throttle.succeeded(email)
    return _tokens(pair)


@router.post(
    "/refresh",
    responses=error_responses(401, 422),
    summary="Exchange a refresh token for a new pair",
)
def refresh(body: RefreshRequest, context: ContextDep, session: SessionDep) -> TokenResponse:
    """Spend the refresh token for a new access token and refresh token. A refresh
    token works once: presenting it again signs out every session of its family."""
    with _transaction(session):
        pair = context.accounts.refresh(session, refresh_token=body.refresh_token)
    return _tokens(pair)


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(422),
    summary="Sign out: revoke the refresh token's session",
)
def logout(body: RefreshRequest, context: ContextDep, session: SessionDep) -> Response:
    """Revoke the refresh token and every token rotated from it. Idempotent."""
    with _transaction(session):
        context.accounts.logout(session, refresh_token=body.refresh_token)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/forgot-password",
    status_code=status.HTTP_202_ACCEPTED,
    responses=error_responses(422),
    summary="Mail a password reset code",
)
def forgot_password(
    body: EmailRequest, context: ContextDep, session: SessionDep
) -> MessageResponse:
    """Mail a reset code to the account's email, if there is such an account."""
    with _transaction(session):
        context.accounts.forgot_password(session, email=body.email)
    return MessageResponse(message=_SENT)


@router.post(
    "/reset-password",
    responses=error_responses(400, 422),
    summary="Set a new password with the reset code",
)
def reset_password(
    body: ResetPasswordRequest, context: ContextDep, session: SessionDep
) -> MessageResponse:
    """Set a new password; every session of the account is signed out."""
    with _transaction(session):
        context.accounts.reset_password(
            session, email=body.email, otp=body.otp, new_password=body.new_password
        )
    return MessageResponse(message="password changed; sign in with the new one")


@router.post(
    "/change-password",
    responses=error_responses(400, 401, 422),
    summary="Change the signed-in user's password",
)
def change_password(
    body: ChangePasswordRequest, user: CurrentUser, context: ContextDep, session: SessionDep
) -> MessageResponse:
    """Change the password; every session, this one included, must sign in again."""
    with _transaction(session):
        context.accounts.change_password(
            session, user, current_password=body.current_password, new_password=body.new_password
        )
    return MessageResponse(message="password changed; sign in again")


@router.get("/me", responses=error_responses(401), summary="The signed-in account")
def me(user: CurrentUser, session: SessionDep) -> UserPublic:
    """The signed-in account."""
    return user_public(session, user)
