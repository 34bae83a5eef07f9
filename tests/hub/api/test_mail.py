"""Mail: codes go through the outbox table and, with an SMTP server configured, out over SMTP."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlmodel import Session, select

sys.path.insert(0, str(Path(__file__).resolve().parent))

from apikit import PASSWORD, MakeApi
from services import free_port

from segs.hub.db import MailMessage
from segs.hub.mail import MailDelivery


class _Inbox:
    """An aiosmtpd handler keeping every message it receives."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append((list(envelope.rcpt_tos), bytes(envelope.content)))
        return "250 OK"


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, _Inbox]]:
    """A real SMTP server on a free loopback port."""
    inbox = _Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield port, inbox
    controller.stop()


def test_a_code_is_delivered_over_smtp_and_marked_sent(
    make_api: MakeApi, smtp_server: tuple[int, _Inbox]
) -> None:
    port, inbox = smtp_server
    api = make_api(smtp_host="127.0.0.1", smtp_port=port, smtp_starttls=False)
    response = api.client.post(
        "/api/v1/auth/register",
        json={"email": "mail@example.com", "username": "mailer", "password": PASSWORD},
    )
    assert response.status_code == 202
    delivery = MailDelivery(api.settings, clock=api.clock, engine=api.engine)
    assert delivery.deliver_once() == 1
    ((recipients, raw),) = inbox.messages
    assert recipients == ["mail@example.com"]
    message = message_from_bytes(raw)
    assert "verify your email" in str(message["Subject"])
    assert api.code("mail@example.com") in message.get_payload()
    with Session(api.engine) as session:
        (row,) = session.exec(select(MailMessage)).all()
        assert row.sent_at is not None
        assert row.attempts == 1
    assert delivery.deliver_once() == 0  # nothing is sent twice
    assert len(inbox.messages) == 1


def test_an_unreachable_smtp_server_keeps_the_mail_for_a_retry(make_api: MakeApi) -> None:
    api = make_api(smtp_host="127.0.0.1", smtp_port=free_port(), smtp_starttls=False)
    api.client.post("/api/v1/auth/forgot-password", json={"email": "x@example.com"})
    api.user("keep@example.com")
    api.client.post("/api/v1/auth/forgot-password", json={"email": "keep@example.com"})
    delivery = MailDelivery(api.settings, clock=api.clock, engine=api.engine)
    assert delivery.deliver_once() == 0
    with Session(api.engine) as session:
        (row,) = session.exec(select(MailMessage)).all()
        assert row.sent_at is None
        assert row.attempts == 1
        assert row.last_error
    # Backoff: not retried at once, retried once its delay has passed.
    assert delivery.deliver_once() == 0
    with Session(api.engine) as session:
        assert session.exec(select(MailMessage)).one().attempts == 1
    api.clock.advance(120)
    assert delivery.deliver_once() == 0
    with Session(api.engine) as session:
        assert session.exec(select(MailMessage)).one().attempts == 2
