"""``segs hub``: the hub's commands.

``segs hub migrate [--config FILE]``
    Apply the database migrations (SQLite and PostgreSQL alike). Exit 1 when they fail.
``segs hub run [--config FILE] [--only COMPONENT ...] [--migrate]``
    Run the hub until SIGTERM/SIGINT: every component, or only those named
    (``ingest``, ``retention``). It refuses to start on a database that is not
    migrated (exit 2) unless ``--migrate`` is given, which migrates first.
``segs hub retention [--config FILE] [--older-than-days DAYS]``
    Delete old minute windows once (default: ``retention_days``) and print how many.

Settings come from ``SEGS_*`` environment variables and the TOML file named by
``--config`` or ``SEGS_CONFIG`` (see :mod:`segs.hub.settings`). Exit 2 when they
are invalid; the message names the setting.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from datetime import timedelta
from pathlib import Path

from segs.hub.app import COMPONENTS
from segs.hub.app import run as run_hub
from segs.hub.db.migrate import migrate
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
