"""What routes depend on: the API context, a database session, the signed-in user, roles.

Routes stay thin by asking for these ``Annotated`` aliases::

    @router.get("/me")
    def me(user: CurrentUser, session: SessionDep) -> UserPublic: ...

Every request with a token re-reads its user, so a suspended account or a
password change takes effect on the next request, not when the token expires.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Final, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from limits import RateLimitItem, parse, storage, strategies
from sqlalchemy import Connection, Engine
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool

from segs.hub.accounts import Accounts
from segs.hub.api.errors import ApiError
from segs.hub.db import Meter, Region, Role, User, UserStatus
from segs.hub.security import AccessClaims, InvalidTokenError, TokenService
from segs.hub.settings import HubSettings

__all__ = [
    "AdminUser",
    "ApiContext",
    "ContextDep",
    "Credentials",
    "CurrentUser",
    "Customer",
    "LoginThrottle",
    "OperatorUser",
    "SessionDep",
    "for_customer",
    "require_roles",
]

_WWW_AUTHENTICATE: Final = {"WWW-Authenticate": "Bearer"}
_T = TypeVar("_T")


class LoginThrottle:
    """Sign-in attempts per client address, and failures per email (in this process).

    Per-email failures are counted for every email, known or not, so an unknown
    address is throttled exactly like a real account (whose lockout is also kept
    in the database, for every API replica to see).
    """

    def __init__(self, settings: HubSettings) -> None:
        self._limiter = strategies.MovingWindowRateLimiter(storage.MemoryStorage())
        self._per_address: RateLimitItem = parse(settings.login_rate_per_address)
        self._per_email: RateLimitItem = parse(
            f"{settings.login_max_failures}/{settings.login_lockout_s} seconds"
        )

    def attempt(self, address: str) -> bool:
        """Count an attempt from ``address``; whether it is within the limit."""
        return self._limiter.hit(self._per_address, "login-address", address)

    def email_blocked(self, email: str) -> bool:
        """Whether ``email`` has used up its failures."""
        return not self._limiter.test(self._per_email, "login-email", email)

    def failed(self, email: str) -> None:
        """Count a failed sign-in of ``email``."""
        self._limiter.hit(self._per_email, "login-email", email)

    def succeeded(self, email: str) -> None:
        """Forget ``email``'s failures."""
        self._limiter.clear(self._per_email, "login-email", email)


@dataclass
class ApiContext:
    """Everything the routes share, built once per app by :func:`segs.hub.api.create_app`."""

    settings: HubSettings
    engine: Engine
    clock: Callable[[], datetime]
    tokens: TokenService
    accounts: Accounts
    throttle: LoginThrottle
    ingest_stats: Callable[[], dict[str, float]] | None = None
    """Counters of the ingest component running in the same process, if any."""


async def _context(request: Request) -> ApiContext:
    context = request.app.state.context
    if not isinstance(context, ApiContext):
        raise TypeError("the app has no ApiContext; build it with create_app()")
    return context


ContextDep = Annotated[ApiContext, Depends(_context)]


def _session(context: ContextDep) -> Iterator[Session]:
    with Session(context.engine, expire_on_commit=False) as session:
        yield session


SessionDep = Annotated[Session, Depends(_session)]

_bearer = HTTPBearer(auto_error=False, description="an access token from /api/v1/auth/login")


def _claims(context: ApiContext, credentials: HTTPAuthorizationCredentials | None) -> AccessClaims:
    if credentials is None:
        raise ApiError(401, "sign in first: send an access token", headers=_WWW_AUTHENTICATE)
    try:
        return context.tokens.verify(credentials.credentials)
    except InvalidTokenError:
        raise ApiError(
            401,
            "the access token is invalid or expired",
            code="invalid_token",
            headers=_WWW_AUTHENTICATE,
        ) from None


def _check(user: User | None, claims: AccessClaims) -> User:
    if (
        user is None
        or user.status != UserStatus.ACTIVE
        or claims.issued_at < user.tokens_valid_after
    ):
        raise ApiError(
            401,
            "the access token is no longer valid",
            code="invalid_token",
            headers=_WWW_AUTHENTICATE,
        )
    return user


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _current_user(context: ContextDep, session: SessionDep, credentials: Credentials) -> User:
    claims = _claims(context, credentials)
    return _check(session.get(User, claims.user_id), claims)


@dataclass(frozen=True, slots=True)
class Customer:
    """The signed-in user with their meter (the first by id) and its region's time zone."""

    user: User
    meter_id: str | None
    timezone: str


def _customer(session: Session, claims: AccessClaims) -> Customer:
    # One round trip for the account, its meter and the meter's time zone: the
    # customer endpoints are the API's hottest.
    row = session.exec(
        select(User, Meter.meter_id, Region.timezone)
        .outerjoin(Meter, col(Meter.customer_id) == col(User.user_id))
        .outerjoin(Region, col(Region.name) == col(Meter.region))
        .where(User.user_id == claims.user_id)
        .order_by(col(Meter.meter_id))
        .limit(1)
    ).first()
    user, meter_id, timezone = row if row is not None else (None, None, None)
    return Customer(user=_check(user, claims), meter_id=meter_id, timezone=timezone or "UTC")


async def for_customer(
    context: ApiContext,
    credentials: HTTPAuthorizationCredentials | None,
    work: Callable[[Connection, str, str], _T],
) -> _T:
    """Run ``work(connection, meter_id, timezone)`` for the signed-in customer's meter.

    The whole request's database work (the account check, then ``work``) runs in
    one worker thread and one transaction: the customer endpoints are the API's
    hottest, and every hop between the event loop and the thread pool costs.
    401 for a bad token, 404 when no meter is linked to the account.
    """
    claims = _claims(context, credentials)

    def in_thread() -> _T:
        with Session(context.engine) as session:
            customer = _customer(session, claims)
            if customer.meter_id is None:
                raise ApiError(404, "no meter is linked to your account")
            return work(session.connection(), customer.meter_id, customer.timezone)

    return await run_in_threadpool(in_thread)


CurrentUser = Annotated[User, Depends(_current_user)]


def require_roles(*roles: Role) -> Callable[[User], User]:
    """A dependency that lets only ``roles`` through (403 for the others)."""
    allowed = {role.value for role in roles}

    def check(user: CurrentUser) -> User:
        if user.role not in allowed:
            raise ApiError(403, f"this needs the role {' or '.join(sorted(allowed))}")
        return user

    return check


OperatorUser = Annotated[User, Depends(require_roles(Role.OPERATOR, Role.ADMIN))]
AdminUser = Annotated[User, Depends(require_roles(Role.ADMIN))]
