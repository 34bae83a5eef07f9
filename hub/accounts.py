"""Accounts: registration, verification, sign-in, token rotation and passwords.

The rules live here, over a SQLModel ``Session``, so the REST API and the
``segs hub create-user`` command share them; the API adds only HTTP. Every
function commits nothing: the caller owns the transaction, so a one-time code
and the mail carrying it are stored together or not at all.

What a client learns is limited on purpose: registering a known email, asking
for a code or a password reset for an unknown one, and a wrong password all
answer the same way, so the API does not reveal which emails have accounts.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import update
from sqlmodel import Session, col, select

from segs.hub.db import (
    Meter,
    OneTimeCode,
    OtpPurpose,
    RefreshToken,
    Region,
    Role,
    User,
    UserPreferences,
    UserStatus,
)
from segs.hub.exceptions import HubError
from segs.hub.mail import enqueue_mail
from segs.hub.security import (
    TokenService,
    check_password_policy,
    hash_one_time_code,
    hash_password,
    hash_secret,
    needs_rehash,
    new_one_time_code,
    new_refresh_token,
    verify_password,
)
from segs.hub.settings import HubSettings

__all__ = [
    "USERNAME_PATTERN",
    "AccountError",
    "Accounts",
    "TokenPair",
    "normalize_email",
]

USERNAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{2,31}$"
"""3 to 32 letters, digits, ``_``, ``.`` or ``-``, starting with a letter or digit."""
_USERNAME = re.compile(USERNAME_PATTERN)


class AccountError(HubError):
    """A request the account rules refuse; ``code`` is stable, ``message`` is for people."""

    code = "account_error"
    status = 400

    def __init__(self, message: str, *, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []


class InvalidCredentialsError(AccountError):
    code, status = "invalid_credentials", 401


class OtpRequiredError(AccountError):
    code, status = "otp_required", 401


class InvalidRefreshTokenError(AccountError):
    code, status = "invalid_refresh_token", 401


class EmailNotVerifiedError(AccountError):
    code, status = "email_not_verified", 403


class AccountSuspendedError(AccountError):
    code, status = "account_suspended", 403


class AccountLockedError(AccountError):
    code, status = "too_many_attempts", 429


class InvalidCodeError(AccountError):
    code, status = "invalid_code", 400


class WrongPasswordError(AccountError):
    code, status = "wrong_password", 400


class PasswordPolicyError(AccountError):
    code, status = "weak_password", 422


class ConflictError(AccountError):
    code, status = "conflict", 409


class UnknownReferenceError(AccountError):
    code, status = "unknown_reference", 422


class InvalidValueError(AccountError):
    code, status = "invalid_value", 422


def normalize_email(email: str) -> str:
    """Emails are compared trimmed and lowercased."""
    return email.strip().lower()


@dataclass(frozen=True, slots=True)
class TokenPair:
    """What ``login`` and ``refresh`` answer."""

    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "bearer"  # noqa: S105 - the OAuth 2 token type, not a secret


class Accounts:
    """The account rules, bound to the hub's settings, token service and clock."""

    def __init__(
        self, settings: HubSettings, tokens: TokenService, *, clock: Callable[[], datetime]
    ) -> None:
        self.settings = settings
        self.tokens = tokens
        self.clock = clock

    # -- creating accounts -----------------------------------------------------------------

    def check_password(self, password: str, *, username: str = "", email: str = "") -> None:
        """Raise :class:`PasswordPolicyError` listing what ``password`` lacks."""
        problems = check_password_policy(
            password, min_length=self.settings.password_min_length, username=username, email=email
        )
        if problems:
            raise PasswordPolicyError("the password does not meet the policy", details=problems)

    def create_user(
        self,
        session: Session,
        *,
        email: str,
        username: str,
        password: str,
        role: Role = Role.USER,
        region: str | None = None,
        meter_id: str | None = None,
        full_name: str | None = None,
        phone: str | None = None,
        verified: bool = False,
    ) -> User:
        """A new account (``pending`` until verified unless ``verified``); links ``meter_id``."""
        email = normalize_email(email)
        if not _USERNAME.match(username):
            raise InvalidValueError(
                "username: 3 to 32 letters, digits, '_', '.' or '-', starting with a letter "
                "or digit"
            )
        self.check_password(password, username=username, email=email)
        if session.exec(select(User.user_id).where(User.email == email)).first() is not None:
            raise ConflictError(f"an account with email {email} exists")
        if session.exec(select(User.user_id).where(User.username == username)).first():
            raise ConflictError(f"username {username!r} is taken")
        meter = None
        if meter_id is not None:
            meter = session.get(Meter, meter_id)
            if meter is None:
                raise UnknownReferenceError(f"no meter {meter_id!r} in the registry")
            if meter.customer_id is not None:
                raise ConflictError(f"meter {meter_id} already belongs to a customer")
            region = region or meter.region
            if region != meter.region:
                raise UnknownReferenceError(f"meter {meter_id} is in region {meter.region}")
        if role is Role.OPERATOR and region is None:
            raise InvalidValueError("an operator needs a region")
        if region is not None and session.get(Region, region) is None:
            raise UnknownReferenceError(f"no region {region!r}")
        now = self.clock()
        user = User(
            user_id=str(uuid.uuid4()),
            email=email,
            username=username,
            password_hash=hash_password(password),
            role=role.value,
            region=region,
            full_name=full_name,
            phone=phone,
            status=(UserStatus.ACTIVE if verified else UserStatus.PENDING).value,
            email_verified=verified,
            created_at=now,
            updated_at=now,
        )
        session.add(user)
        session.add(UserPreferences(user_id=user.user_id, updated_at=now))
        if meter is not None:
            meter.customer_id = user.user_id
            session.add(meter)
        session.flush()
        return user

    def register(
        self,
        session: Session,
        *,
        email: str,
        username: str,
        password: str,
        full_name: str | None = None,
        phone: str | None = None,
    ) -> None:
        """Create a pending account and mail its verification code.

        A known email gets a mail saying so instead, and the caller answers as if
        the account were new: registration does not reveal who has an account.
        """
        email = normalize_email(email)
        existing = session.exec(select(User).where(User.email == email)).first()
        if existing is not None:
            self.check_password(password, username=username, email=email)
            enqueue_mail(
                session,
                to=email,
                subject="SEGS: someone tried to register with your email",
                body="An account with this email already exists. Sign in, or reset your "
                "password if you forgot it. If this was not you, ignore this mail.",
                now=self.clock(),
            )
            return
        user = self.create_user(
            session,
            email=email,
            username=username,
            password=password,
            full_name=full_name,
            phone=phone,
        )
        self._send_code(session, user, OtpPurpose.VERIFY_EMAIL)

    # -- one-time codes --------------------------------------------------------------------

    def _send_code(self, session: Session, user: User, purpose: OtpPurpose) -> None:
        code = new_one_time_code()
        now = self.clock()
        row = session.get(OneTimeCode, (user.user_id, purpose.value))
        if row is None:
            row = OneTimeCode(
                user_id=user.user_id, purpose=purpose.value, code_hash="", expires_at=now
            )
        row.code_hash = self._code_hash(user.user_id, purpose, code)
        row.expires_at = now + timedelta(seconds=self.settings.otp_ttl_s)
        row.attempts = 0
        row.created_at = now
        session.add(row)
        minutes = max(1, self.settings.otp_ttl_s // 60)
        what = {
            OtpPurpose.VERIFY_EMAIL: "verify your email address",
            OtpPurpose.RESET_PASSWORD: "reset your password",
            OtpPurpose.LOGIN: "sign in",
        }[purpose]
        enqueue_mail(
            session,
            to=user.email,
            subject=f"SEGS: your code to {what}",
            body=f"Your SEGS code to {what} is {code}. It expires in {minutes} minutes.\n"
            "If you did not ask for it, ignore this mail.",
            now=now,
        )

    def _code_hash(self, user_id: str, purpose: OtpPurpose, code: str) -> str:
        secret = self.settings.jwt_secret.get_secret_value()
        return hash_one_time_code(secret, user_id=user_id, purpose=purpose.value, code=code)

    def _consume_code(self, session: Session, user: User, purpose: OtpPurpose, code: str) -> bool:
        row = session.get(OneTimeCode, (user.user_id, purpose.value))
        if row is None:
            return False
        if row.expires_at <= self.clock() or row.attempts >= self.settings.otp_max_attempts:
            session.delete(row)
            return False
        if row.code_hash != self._code_hash(user.user_id, purpose, code.strip()):
            row.attempts += 1
            session.add(row)
            return False
        session.delete(row)
        return True

    def _user_by_email(self, session: Session, email: str) -> User | None:
        return session.exec(select(User).where(User.email == normalize_email(email))).first()

    def verify_email(self, session: Session, *, email: str, otp: str) -> None:
        """Activate a pending account with its code; :class:`InvalidCodeError` otherwise."""
        user = self._user_by_email(session, email)
        if user is None or not self._consume_code(session, user, OtpPurpose.VERIFY_EMAIL, otp):
            raise InvalidCodeError("the code is wrong or expired; ask for a new one")
        user.email_verified = True
        if user.status == UserStatus.PENDING:
            user.status = UserStatus.ACTIVE.value
        user.updated_at = self.clock()
        session.add(user)

    def resend_code(self, session: Session, *, email: str) -> None:
        """Mail a fresh verification code to a pending account; silently nothing otherwise."""
        user = self._user_by_email(session, email)
        if user is not None and not user.email_verified:
            self._send_code(session, user, OtpPurpose.VERIFY_EMAIL)

    # -- signing in ------------------------------------------------------------------------

    def login(self, session: Session, *, email: str, password: str, otp: str | None) -> TokenPair:
        """Check the credentials (and the second factor) and start a token family."""
        user = self._user_by_email(session, email)
        now = self.clock()
        if user is not None and user.locked_until is not None and user.locked_until > now:
            raise AccountLockedError("too many failed sign-ins; try again later")
        if not verify_password(user.password_hash if user else None, password) or user is None:
            if user is not None:
                self._failed(session, user)
            raise InvalidCredentialsError("wrong email or password")
        if user.status == UserStatus.SUSPENDED:
            raise AccountSuspendedError("this account is suspended; contact your operator")
        if not user.email_verified:
            raise EmailNotVerifiedError("verify your email address first (see the code we sent)")
        if user.otp_login:
            if not otp:
                self._send_code(session, user, OtpPurpose.LOGIN)
                raise OtpRequiredError("enter the sign-in code we sent to your email")
            if not self._consume_code(session, user, OtpPurpose.LOGIN, otp):
                self._failed(session, user)
                raise InvalidCredentialsError("the sign-in code is wrong or expired")
        if needs_rehash(user.password_hash):
            user.password_hash = hash_password(password)
        user.failed_logins = 0
        user.locked_until = None
        user.last_login_at = now
        session.add(user)
        return self._issue(session, user, family_id=str(uuid.uuid4()))

    def _failed(self, session: Session, user: User) -> None:
        user.failed_logins += 1
        if user.failed_logins >= self.settings.login_max_failures:
            user.locked_until = self.clock() + timedelta(seconds=self.settings.login_lockout_s)
            user.failed_logins = 0
        session.add(user)

    def _issue(self, session: Session, user: User, *, family_id: str) -> TokenPair:
        now = self.clock()
        access = self.tokens.issue(
            user_id=user.user_id,
            username=user.username,
            email=user.email,
            role=user.role,
            region=user.region,
            meter_id=self.meter_of(session, user.user_id),
        )
        refresh, refresh_hash = new_refresh_token()
        session.add(
            RefreshToken(
                token_hash=refresh_hash,
                user_id=user.user_id,
                family_id=family_id,
                issued_at=now,
                expires_at=now + timedelta(seconds=self.settings.refresh_token_ttl_s),
            )
        )
        return TokenPair(access_token=access, refresh_token=refresh, expires_in=self.tokens.ttl_s)

    def refresh(self, session: Session, *, refresh_token: str) -> TokenPair:
        """Spend a refresh token for a new pair; a spent one revokes its whole family.

        The caller must commit even when this raises: the revocation is the point.
        """
        row = session.get(RefreshToken, hash_secret(refresh_token))
        now = self.clock()
        if row is None or row.revoked_at is not None or row.expires_at <= now:
            raise InvalidRefreshTokenError("the refresh token is invalid or expired")
        if row.spent_at is not None:
            self.revoke_family(session, row.family_id)
            raise InvalidRefreshTokenError(
                "the refresh token was already used; every session of its family is signed out"
            )
        user = session.get(User, row.user_id)
        if user is None or user.status != UserStatus.ACTIVE:
            raise InvalidRefreshTokenError("the refresh token is invalid or expired")
        # Spend it with a guarded UPDATE: of two concurrent refreshes, one wins.
        spent = session.connection().execute(
            update(RefreshToken)
            .where(col(RefreshToken.token_hash) == row.token_hash)
            .where(col(RefreshToken.spent_at).is_(None))
            .values(spent_at=now)
        )
        if spent.rowcount != 1:
            self.revoke_family(session, row.family_id)
            raise InvalidRefreshTokenError("the refresh token was already used")
        return self._issue(session, user, family_id=row.family_id)

    def revoke_family(self, session: Session, family_id: str) -> None:
        """Revoke every refresh token of a family (a session and its rotations)."""
        session.connection().execute(
            update(RefreshToken)
            .where(col(RefreshToken.family_id) == family_id)
            .where(col(RefreshToken.revoked_at).is_(None))
            .values(revoked_at=self.clock())
        )

    def revoke_all(self, session: Session, user: User) -> None:
        """Sign a user out everywhere: refresh tokens revoked, access tokens refused."""
        session.connection().execute(
            update(RefreshToken)
            .where(col(RefreshToken.user_id) == user.user_id)
            .where(col(RefreshToken.revoked_at).is_(None))
            .values(revoked_at=self.clock())
        )
        # Tokens issued in this very second stay valid: iat has one-second resolution
        # and the token the caller gets next must work.
        user.tokens_valid_after = int(self.clock().timestamp())
        session.add(user)

    def logout(self, session: Session, *, refresh_token: str) -> None:
        """Revoke the refresh token's family; unknown tokens are ignored (logout is idempotent)."""
        row = session.get(RefreshToken, hash_secret(refresh_token))
        if row is not None:
            self.revoke_family(session, row.family_id)

    # -- passwords -------------------------------------------------------------------------

    def forgot_password(self, session: Session, *, email: str) -> None:
        """Mail a reset code to an active or pending account; silently nothing otherwise."""
        user = self._user_by_email(session, email)
        if user is not None and user.status != UserStatus.SUSPENDED:
            self._send_code(session, user, OtpPurpose.RESET_PASSWORD)

    def reset_password(self, session: Session, *, email: str, otp: str, new_password: str) -> None:
        """Set a new password with a reset code; every session is signed out."""
        user = self._user_by_email(session, email)
        if user is None:
            raise InvalidCodeError("the code is wrong or expired; ask for a new one")
        self.check_password(new_password, username=user.username, email=user.email)
        if not self._consume_code(session, user, OtpPurpose.RESET_PASSWORD, otp):
            raise InvalidCodeError("the code is wrong or expired; ask for a new one")
        self._set_password(session, user, new_password)
        # The code reached the mailbox: the address is verified.
        if not user.email_verified:
            user.email_verified = True
            if user.status == UserStatus.PENDING:
                user.status = UserStatus.ACTIVE.value

    def change_password(
        self, session: Session, user: User, *, current_password: str, new_password: str
    ) -> None:
        """Change a signed-in user's password; other sessions are signed out."""
        if not verify_password(user.password_hash, current_password):
            raise WrongPasswordError("the current password is wrong")
        if current_password == new_password:
            raise PasswordPolicyError(
                "the password does not meet the policy",
                details=["Choose a password different from the current one."],
            )
        self.check_password(new_password, username=user.username, email=user.email)
        self._set_password(session, user, new_password)

    def _set_password(self, session: Session, user: User, password: str) -> None:
        user.password_hash = hash_password(password)
        user.failed_logins = 0
        user.locked_until = None
        user.updated_at = self.clock()
        self.revoke_all(session, user)

    # -- lookups ---------------------------------------------------------------------------

    @staticmethod
    def meter_of(session: Session, user_id: str) -> str | None:
        """The user's meter (the first by id when there are several), or ``None``."""
        return session.exec(
            select(Meter.meter_id)
            .where(Meter.customer_id == user_id)
            .order_by(col(Meter.meter_id))
            .limit(1)
        ).first()
