"""``segs hub``: the hub's commands.

``segs hub migrate [--config FILE]``
    Apply the database migrations (SQLite and PostgreSQL alike). Exit 1 when they fail.
``segs hub run [--config FILE] [--only COMPONENT ...] [--migrate]``
    Run the hub until SIGTERM/SIGINT: every component, or only those named
    (``ingest``, ``retention``). It refuses to start on a database that is not
    migrated (exit 2) unless ``--migrate`` is given, which migrates first.
``segs hub retention [--config FILE] [--older-than-days DAYS]``
    Delete old minute windows once (default: ``retention_days``) and print how many.
``segs hub create-user --email E --password P --role R [--region R] [--meter M] [--username U]``
    Create an active, verified account (the first admin, operators, demo customers).
    Exit 1 when the rules refuse it (weak password, taken email, unknown meter).
``segs hub outbox [--to EMAIL] [--limit N] [--json]``
    Print the newest mail of the outbox (one-time codes when no SMTP server is set up).

Settings come from ``SEGS_*`` environment variables and the TOML file named by
``--config`` or ``SEGS_CONFIG`` (see :mod:`segs.hub.settings`). Exit 2 when they
are invalid; the message names the setting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
from datetime import timedelta
from pathlib import Path

from sqlmodel import Session, col, select

from segs.hub.app import COMPONENTS
from segs.hub.app import run as run_hub
from segs.hub.db import MailMessage, Role
from segs.hub.db.engine import make_engine
from segs.hub.db.migrate import check_current, migrate
from segs.hub.db.types import utc_now
from segs.hub.exceptions import ConfigError, HubError, MigrationError, SchemaNotCurrentError
from segs.hub.settings import HubSettings, load_settings
from segs.hub.store import StoreOptions, open_store

__all__ = ["build_parser", "run"]

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The ``segs hub`` argument parser."""
    parser = argparse.ArgumentParser(prog=prog, description="The SEGS hub.")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def with_config(command: argparse.ArgumentParser) -> argparse.ArgumentParser:
        command.add_argument(
            "--config", type=Path, metavar="FILE", help="hub.toml (default: $SEGS_CONFIG)"
        )
        return command

    with_config(
        sub.add_parser(
            "migrate",
            help="apply the database migrations",
            description="Upgrade the database named by database_url to the latest schema.",
        )
    )
    run = with_config(
        sub.add_parser(
            "run",
            help="run the hub until SIGTERM",
            description="Run the hub's components in one process until SIGTERM/SIGINT.",
        )
    )
    run.add_argument(
        "--only",
        nargs="+",
        choices=COMPONENTS,
        metavar="COMPONENT",
        help=f"run only these components ({', '.join(COMPONENTS)}); "
        "e.g. --only ingest for a scale-out ingest worker",
    )
    run.add_argument(
        "--migrate", action="store_true", help="apply the migrations first (demo convenience)"
    )
    retention = with_config(
        sub.add_parser(
            "retention",
            help="delete old minute windows once",
            description="Delete minute windows older than the retention period, once.",
        )
    )
    retention.add_argument(
        "--older-than-days", type=float, metavar="DAYS", help="default: retention_days"
    )
    create_user = with_config(
        sub.add_parser(
            "create-user",
            help="create an active account",
            description="Create an active, verified account: the first admin, operators, "
            "customers linked to their meter.",
        )
    )
    create_user.add_argument("--email", required=True)
    create_user.add_argument("--password", required=True)
    create_user.add_argument("--role", choices=[role.value for role in Role], default="user")
    create_user.add_argument("--region", help="required for operators; default: the meter's")
    create_user.add_argument("--meter", metavar="METER_ID", help="link this meter to the user")
    create_user.add_argument("--username", help="default: the email's local part")
    outbox = with_config(
        sub.add_parser(
            "outbox",
            help="print the mail outbox",
            description="Print the newest mail the hub wrote (one-time codes), newest last.",
        )
    )
    outbox.add_argument("--to", metavar="EMAIL", help="only mail to this address")
    outbox.add_argument("--limit", type=int, default=10, help="how many (default 10)")
    outbox.add_argument("--json", action="store_true", help="one JSON object per line")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``segs hub`` command; return the exit code."""
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"segs hub: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format=_LOG_FORMAT)
    try:
        if args.action == "migrate":
            revision = migrate(settings.database_url)
            print(f"database at revision {revision}")
            return 0
        if args.action == "retention":
            return _retention(settings, args.older_than_days)
        if args.action == "create-user":
            return _create_user(settings, args)
        if args.action == "outbox":
            return _outbox(settings, args)
        if args.migrate:
            migrate(settings.database_url)
        return asyncio.run(run_hub(settings, only=args.only))
    except SchemaNotCurrentError as exc:
        print(f"segs hub: {exc}", file=sys.stderr)
        return 2
    except MigrationError as exc:
        print(f"segs hub: {exc}", file=sys.stderr)
        return 1
    except HubError as exc:
        print(f"segs hub: {exc}", file=sys.stderr)
        return 1


def _retention(settings: HubSettings, days: float | None) -> int:
    days = settings.retention_days if days is None else days
    if days <= 0:
        print("retention is off (retention_days = 0); nothing deleted")
        return 0
    cutoff = utc_now() - timedelta(days=days)
    with open_store(settings.database_url, options=StoreOptions.from_settings(settings)) as store:
        deleted = store.retention(cutoff, batch_size=settings.retention_batch_size)
    print(f"deleted {deleted} minute windows older than {cutoff.isoformat()}")
    return 0


def _create_user(settings: HubSettings, args: argparse.Namespace) -> int:
    from segs.hub.accounts import AccountError, Accounts  # noqa: PLC0415 - not for ingest
    from segs.hub.security import TokenService  # noqa: PLC0415

    engine = make_engine(settings.database_url)
    try:
        check_current(engine)
        accounts = Accounts(settings, TokenService(settings, clock=utc_now), clock=utc_now)
        username = args.username or _username_from(args.email)
        with Session(engine) as session:
            try:
                user = accounts.create_user(
                    session,
                    email=args.email,
                    username=username,
                    password=args.password,
                    role=Role(args.role),
                    region=args.region,
                    meter_id=args.meter,
                    verified=True,
                )
            except AccountError as exc:
                details = "".join(f"\n  - {line}" for line in exc.details)
                print(f"segs hub create-user: {exc.message}{details}", file=sys.stderr)
                return 1
            session.commit()
            print(
                f"created {user.role} {user.email} (username {user.username}, id {user.user_id}"
                + (f", region {user.region}" if user.region else "")
                + (f", meter {args.meter}" if args.meter else "")
                + ")"
            )
        return 0
    finally:
        engine.dispose()


def _username_from(email: str) -> str:
    local = re.sub(r"[^A-Za-z0-9_.-]", "-", email.split("@", 1)[0]).strip("-._")
    return (local or "user")[:32].ljust(3, "0")


def _outbox(settings: HubSettings, args: argparse.Namespace) -> int:
    engine = make_engine(settings.database_url)
    try:
        check_current(engine)
        with Session(engine) as session:
            query = select(MailMessage).order_by(col(MailMessage.id).desc()).limit(args.limit)
            if args.to:
                query = query.where(MailMessage.to_address == args.to.strip().lower())
            rows = list(reversed(session.exec(query).all()))
        for row in rows:
            if args.json:
                print(
                    json.dumps(
                        {
                            "id": row.id,
                            "to": row.to_address,
                            "subject": row.subject,
                            "body": row.body,
                            "created_at": row.created_at.isoformat(),
                            "sent_at": row.sent_at.isoformat() if row.sent_at else None,
                        }
                    )
                )
            else:
                state = f"sent {row.sent_at.isoformat()}" if row.sent_at else "not sent"
                print(f"--- #{row.id} {row.created_at.isoformat()} to {row.to_address} ({state})")
                print(f"Subject: {row.subject}\n\n{row.body}\n")
        if not rows and not args.json:
            print("the outbox is empty")
        return 0
    finally:
        engine.dispose()
