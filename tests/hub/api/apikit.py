"""Helpers for the API tests: an app under a TestClient, accounts, sign-in, codes from the outbox.

Import it from a test module of this folder after putting the folder on ``sys.path``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, col, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hubkit import Clock

from segs.hub.accounts import Accounts
from segs.hub.api import create_app
from segs.hub.db import MailMessage, Role, User
from segs.hub.db.engine import make_engine
from segs.hub.security import TokenService
from segs.hub.settings import HubSettings

PASSWORD: Final = "long-enough-pass-phrase"
"""The password of every account the tests create."""

MakeApi = Callable[..., "Api"]
"""The ``make_api`` fixture: ``make_api(**settings) -> Api``."""

_CODE = re.compile(r"\b(\d{6})\b")


@dataclass
class Api:
    """An app, its client, database engine, clock and settings."""

    client: TestClient
    engine: Engine
    clock: Clock
    settings: HubSettings
    accounts: Accounts = field(init=False)

    def __post_init__(self) -> None:
        self.accounts = Accounts(
            self.settings, TokenService(self.settings, clock=self.clock), clock=self.clock
        )

    def close(self) -> None:
        """Stop the client and release the database."""
        self.client.close()
        self.engine.dispose()

    def user(
        self,
        email: str,
        *,
        role: Role = Role.USER,
        region: str | None = None,
        meter: str | None = None,
        password: str = PASSWORD,
    ) -> str:
        """Create an active account directly (as ``segs hub create-user`` does); its id."""
        with Session(self.engine) as session:
            user = self.accounts.create_user(
                session,
                email=email,
                username=email.split("@", 1)[0].replace("+", "-"),
                password=password,
                role=role,
                region=region,
                meter_id=meter,
                verified=True,
            )
            session.commit()
            return user.user_id

    def login(self, email: str, password: str = PASSWORD, **extra: Any) -> dict[str, Any]:
        """Sign in; the token response (fails the test unless 200)."""
        response = self.client.post(
            "/api/v1/auth/login", json={"email": email, "password": password, **extra}
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def headers(self, email: str, password: str = PASSWORD) -> dict[str, str]:
        """Authorization headers of a fresh sign-in."""
        return {"Authorization": f"Bearer {self.login(email, password)['access_token']}"}

    def mails(self, to: str) -> list[MailMessage]:
        """The outbox's mail to ``to``, oldest first."""
        with Session(self.engine) as session:
            return list(
                session.exec(
                    select(MailMessage)
                    .where(MailMessage.to_address == to)
                    .order_by(col(MailMessage.id))
                ).all()
            )

    def code(self, to: str) -> str:
        """The six-digit code of the newest mail to ``to``."""
        mails = self.mails(to)
        assert mails, f"no mail to {to}"
        match = _CODE.search(mails[-1].body)
        assert match is not None, mails[-1].body
        return match.group(1)


def open_api(database_url: str, **settings: Any) -> Api:
    """An :class:`Api` on ``database_url`` with demo-mode settings plus ``settings``."""
    hub_settings = HubSettings(database_url=database_url, **settings)
    engine = make_engine(database_url)
    clock = Clock(datetime.now(UTC).replace(microsecond=0))
    app = create_app(hub_settings, engine=engine, clock=clock)
    client = TestClient(app, raise_server_exceptions=False)
    return Api(client=client, engine=engine, clock=clock, settings=hub_settings)


# -- the error shape ---------------------------------------------------------------------------


def error_of(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The ``error`` object of an API error answer, checked against the one error shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"status", "code", "message", "details"}, error
    assert error["status"] == status, error
    assert isinstance(error["code"], str), error
    assert isinstance(error["message"], str), error
    assert error["code"], error
    assert error["message"], error
    assert isinstance(error["details"], list), error
    if code is not None:
        assert error["code"] == code, error
    return error


def bearer(api: Api, user_id: str) -> dict[str, str]:
    """Authorization headers with an access token for ``user_id``, issued as sign-in issues
    them but without its password check (argon2 costs a fifth of a second a try)."""
    with Session(api.engine) as session:
        user = session.get(User, user_id)
        assert user is not None, user_id
        token = api.accounts.tokens.issue(
            user_id=user.user_id,
            username=user.username,
            email=user.email,
            role=user.role,
            region=user.region,
            meter_id=Accounts.meter_of(session, user.user_id),
        )
    return {"Authorization": f"Bearer {token}"}
