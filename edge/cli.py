"""``segs edge``: the gateway agent's commands.

``segs edge check --config edge.toml [--timeout S]``
    Read every configured meter once and print a table of decoded values and
    errors. Exit 0 when every meter is ok, 1 when any failed, 2 when the
    configuration is invalid (the message names the key).
``segs edge run --config edge.toml``
    Run the agent until SIGTERM/SIGINT. Exit 2 when the configuration is invalid.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from pathlib import Path
from typing import Protocol, cast

from segs.edge.check import check_meters, exit_code, format_table
from segs.edge.config import EdgeSettings, load_settings
from segs.edge.exceptions import ConfigError

__all__ = ["build_parser", "run"]

_LEVELS = ("debug", "info", "warning", "error")
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Agent(Protocol):
    async def run(self, settings: EdgeSettings) -> int: ...


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value <= 60.0:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 60, got {text}")
    return value


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The ``segs edge`` argument parser."""
    parser = argparse.ArgumentParser(prog=prog, description="The SEGS edge agent.")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    check = sub.add_parser(
        "check",
        help="read every configured meter once and print what it says",
        description="Read every meter of the config once and print a table of decoded values "
        "(V, I, P, PF, Hz, kWh) and errors. Exit 0 when all are ok, 1 when any failed, "
        "2 for an invalid configuration.",
    )
    check.add_argument("--config", type=Path, required=True, metavar="FILE", help="edge.toml")
    check.add_argument(
        "--timeout",
        type=_positive,
        metavar="S",
        help="seconds to wait for each answer (default: each bus's timeout_s)",
    )
    check.add_argument(
        "--log-level", choices=_LEVELS, default="error", help="log level (default: error)"
    )

    agent = sub.add_parser(
        "run",
        help="run the agent until SIGTERM/SIGINT",
        description="Poll the meters, aggregate windows, keep them in the outbox and publish "
        "them over MQTT until SIGTERM or SIGINT.",
    )
    agent.add_argument("--config", type=Path, required=True, metavar="FILE", help="edge.toml")
    agent.add_argument(
        "--log-level", choices=_LEVELS, help="log level (default: the config's log_level)"
    )
    return parser


def _load(path: Path) -> EdgeSettings | None:
    try:
        return load_settings(path)
    except ConfigError as exc:
        print(f"segs edge: invalid configuration\n{exc}", file=sys.stderr)
        return None


def run(args: argparse.Namespace) -> int:
    """Run ``segs edge ACTION``; return the exit code."""
    settings = _load(args.config)
    if settings is None:
        return 2
    level = (args.log_level or settings.log_level).upper()
    logging.basicConfig(level=level, format=_LOG_FORMAT)
    if args.action == "check":
        results = asyncio.run(check_meters(settings, timeout_s=args.timeout))
        print(format_table(results))
        return exit_code(results)
    agent = cast("_Agent", importlib.import_module("segs.edge.agent"))
    return asyncio.run(agent.run(settings))
