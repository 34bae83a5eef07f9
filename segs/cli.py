"""The ``segs`` command line.

Each subcommand lives in the package it belongs to and is imported only when it
is run, so ``segs edge ...`` works on a gateway that installed only ``segs[edge]``.
A subcommand module provides ``build_parser(prog) -> ArgumentParser`` and
``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass
from typing import Protocol, cast

from segs import __version__


class _CommandModule(Protocol):
    def build_parser(self, prog: str) -> argparse.ArgumentParser: ...

    def run(self, args: argparse.Namespace) -> int: ...


@dataclass(frozen=True)
class Command:
    """One ``segs`` subcommand: where it lives and which extra it needs."""

    module: str
    summary: str
    extra: str | None


COMMANDS: dict[str, Command] = {
    "protocol": Command(
        "segs.protocol.cli",
        "inspect the wire contract: check payloads, list device profiles, render docs",
        None,
    ),
    "edge": Command(
        "segs.edge.cli",
        "the gateway agent: check the meters on site, run the agent",
        "edge",
    ),
    "hub": Command(
        "segs.hub.cli",
        "the central hub: migrate its database, run ingest and its other components",
        "hub",
    ),
    "sim": Command(
        "segs.sim.cli",
        "simulated SDM630/SDM120/SunSpec meters over Modbus TCP/RTU, with fault injection",
        "sim",
    ),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: segs [--version] COMMAND [ARGS...]",
        "",
        "SEGS, the Smart Energy Grid System.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {cmd.summary}" for name, cmd in sorted(COMMANDS.items())]
    lines += ["", "Run 'segs COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the ``segs`` command; return the process exit code."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help"}:
        print(_usage())
        return 0 if args else 2
    if args[0] == "--version":
        print(f"segs {__version__}")
        return 0
    name, rest = args[0], args[1:]
    command = COMMANDS.get(name)
    if command is None:
        print(f"segs: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        module = cast("_CommandModule", importlib.import_module(command.module))
    except ModuleNotFoundError as exc:
        if command.extra is None or (exc.name or "").startswith("segs"):
            raise
        print(
            f"segs {name}: the module {exc.name!r} is missing; "
            f"install the '{command.extra}' extra: pip install 'segs[{command.extra}]'",
            file=sys.stderr,
        )
        return 2
    parser = module.build_parser(f"segs {name}")
    try:
        return module.run(parser.parse_args(rest))
    except BrokenPipeError:
        # The reader (head, less) went away: not an error of ours. Silence the
        # interpreter's own flush of stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
