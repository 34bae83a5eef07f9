"""Mail: every message goes into the ``mail_outbox`` table first, SMTP delivers it when set up.

Writing the mail in the same transaction as what it announces (a one-time
code) means a code is never stored without its mail, nor mailed without being
stored. Without ``smtp_host`` the outbox is where mail stays: ``segs hub
outbox`` prints it (the demo and the tests read codes from there). With it, the
:class:`MailDelivery` component sends pending messages and records each
attempt; a message that keeps failing is retried with backoff up to
:data:`MAX_ATTEMPTS` times.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
from collections.abc import Callable
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Final

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from segs.hub.db import MailMessage
from segs.hub.db.engine import make_engine
from segs.hub.settings import HubSettings

__all__ = ["MAX_ATTEMPTS", "MailDelivery", "enqueue_mail", "pending_mail"]

MAX_ATTEMPTS: Final = 8
"""Delivery attempts before a message is left for an operator to look at."""
POLL_INTERVAL_S: Final = 2.0
_SMTP_TIMEOUT_S: Final = 20.0

_log = logging.getLogger(__name__)


def enqueue_mail(session: Session, *, to: str, subject: str, body: str, now: datetime) -> None:
    """Add a message to the outbox in the caller's transaction."""
    session.add(MailMessage(to_address=to, subject=subject, body=body, created_at=now))


def pending_mail(session: Session, *, now: datetime, limit: int = 50) -> list[MailMessage]:
    """Unsent messages due for an attempt: never tried, or their backoff has passed."""
    rows = session.exec(
        select(MailMessage)
        .where(col(MailMessage.sent_at).is_(None))
        .where(col(MailMessage.attempts) < MAX_ATTEMPTS)
        .order_by(col(MailMessage.id))
        .limit(limit)
    ).all()
    return [row for row in rows if row.attempts == 0 or _next_attempt(row) <= now]


def _next_attempt(row: MailMessage) -> datetime:
    return row.created_at + timedelta(seconds=30 * 2 ** min(row.attempts, 10))


class MailDelivery:
    """Sends the outbox over SMTP until cancelled (a ``segs hub run`` component)."""

    def __init__(
        self,
        settings: HubSettings,
        *,
        clock: Callable[[], datetime],
        engine: Engine | None = None,
    ) -> None:
        self._settings = settings
        self._own_engine = engine is None
        self._engine = engine or make_engine(settings.database_url)
        self._clock = clock

    async def run(self) -> None:
        """Deliver pending mail every few seconds; without ``smtp_host``, do nothing."""
        try:
            if not self._settings.smtp_host:
                _log.info("no smtp_host: mail stays in the outbox (segs hub outbox prints it)")
                await asyncio.Event().wait()
            while True:
                sent = await asyncio.to_thread(self.deliver_once)
                if not sent:
                    await asyncio.sleep(POLL_INTERVAL_S)
        finally:
            if self._own_engine:
                self._engine.dispose()

    def deliver_once(self) -> int:
        """Try every due message once; return how many were sent."""
        with Session(self._engine) as session:
            due = pending_mail(session, now=self._clock())
            sent = 0
            for row in due:
                try:
                    self._send(row)
                except (OSError, smtplib.SMTPException) as exc:
                    row.attempts += 1
                    row.last_error = f"{type(exc).__name__}: {exc}"[:2000]
                    level = logging.WARNING if row.attempts == 1 else logging.DEBUG
                    _log.log(level, "mail %s to %s not sent: %s", row.id, row.to_address, exc)
                else:
                    row.attempts += 1
                    row.sent_at = self._clock()
                    row.last_error = None
                    sent += 1
                session.add(row)
                session.commit()
            return sent

    def _send(self, row: MailMessage) -> None:
        settings = self._settings
        message = EmailMessage()
        message["From"] = settings.mail_from
        message["To"] = row.to_address
        message["Subject"] = row.subject
        message.set_content(row.body)
        host = settings.smtp_host or ""
        with smtplib.SMTP(host, settings.smtp_port, timeout=_SMTP_TIMEOUT_S) as smtp:
            if settings.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if settings.smtp_username:
                password = (
                    settings.smtp_password.get_secret_value() if settings.smtp_password else ""
                )
                smtp.login(settings.smtp_username, password)
            smtp.send_message(message)
