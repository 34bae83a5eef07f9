"""``segs sim``: run simulated meters until SIGINT/SIGTERM.

Quick start, N meters on one bus (more than ``--per-bus`` meters go to further
buses on consecutive ports)::

    segs sim --meters 10 --port 5020 --profile mixed --seed 1 --state sim-state.json

Full form: ``segs sim --config sim.toml`` (see ``docs/simulator.md``); ``--seed``,
``--interval``, ``--control-port``, ``--control-host``, ``--no-control``, ``--state`` and
``--state-interval`` override the file.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys
from pathlib import Path

from segs.sim.app import Simulator
from segs.sim.config import (
    DEFAULT_CONTROL_PORT,
    MAX_UNIT_ID,
    QUICK_PROFILES,
    ControlConfig,
    SimConfig,
    load_config,
    quick_config,
)
from segs.sim.exceptions import ConfigError, SimError

__all__ = ["build_parser", "config_from_args", "run"]

_QUICK_ONLY = ("meters", "port", "profile", "host", "per_bus", "prosumer_share", "timezone")


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The ``segs sim`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve simulated SDM630, SDM120 and SunSpec meters over Modbus TCP/RTU, "
        "with a control API for the true state and fault injection.",
    )
    quick = parser.add_argument_group("quick start (one bus per 247 meters, on 127.0.0.1)")
    quick.add_argument("--meters", type=int, metavar="N", help="number of meters")
    quick.add_argument("--port", type=int, metavar="P", help="Modbus TCP port of the first bus")
    quick.add_argument(
        "--profile",
        choices=QUICK_PROFILES,
        help="device profile of every meter; 'mixed' rotates sdm630, sdm120, sunspec203 "
        "(default: sdm630)",
    )
    quick.add_argument("--host", help="address the buses listen on (default: 127.0.0.1)")
    quick.add_argument(
        "--per-bus",
        type=int,
        metavar="K",
        help=f"meters per bus, unit ids 1..K (default and maximum: {MAX_UNIT_ID})",
    )
    quick.add_argument(
        "--prosumer-share",
        type=float,
        metavar="X",
        help="share of meters with PV export, 0..1 (default: 0.3)",
    )
    quick.add_argument("--timezone", help="IANA timezone of the load curves (default: UTC)")
    parser.add_argument("--config", type=Path, metavar="FILE", help="a sim.toml config file")
    parser.add_argument("--seed", type=int, metavar="S", help="seed of the physics (default: 0)")
    parser.add_argument(
        "--interval", type=float, metavar="SECONDS", help="seconds between updates (default: 1)"
    )
    parser.add_argument(
        "--control-port",
        type=int,
        metavar="C",
        help=f"port of the HTTP control API (default: {DEFAULT_CONTROL_PORT}; 0: a free port)",
    )
    parser.add_argument("--control-host", help="address of the control API (default: 127.0.0.1)")
    parser.add_argument("--no-control", action="store_true", help="do not serve the control API")
    parser.add_argument(
        "--state", type=Path, metavar="FILE", help="keep energy counters in FILE across restarts"
    )
    parser.add_argument(
        "--state-interval",
        type=float,
        metavar="SECONDS",
        help="seconds between two saves of the state file (default: 10)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="log level (default: info)",
    )
    return parser


def _control(args: argparse.Namespace, base: ControlConfig) -> ControlConfig:
    return ControlConfig(
        host=args.control_host if args.control_host is not None else base.host,
        port=args.control_port if args.control_port is not None else base.port,
        enabled=base.enabled and not args.no_control,
    )


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """Build the config the arguments describe; :class:`ConfigError` names the bad option."""
    if args.config is not None:
        given = [f"--{name.replace('_', '-')}" for name in _QUICK_ONLY if getattr(args, name)]
        if given:
            raise ConfigError(f"{', '.join(given)} cannot be combined with --config")
        config = load_config(args.config)
        overrides: dict[str, object] = {"control": _control(args, config.control)}
        if args.seed is not None:
            overrides["seed"] = args.seed
        if args.interval is not None:
            overrides["update_interval"] = args.interval
        if args.state is not None:
            overrides["state_file"] = args.state
        if args.state_interval is not None:
            overrides["state_interval"] = args.state_interval
        return dataclasses.replace(config, **overrides)  # type: ignore[arg-type]
    if args.meters is None or args.port is None:
        raise ConfigError("give --meters and --port (quick start) or --config FILE")
    return quick_config(
        args.meters,
        args.port,
        profile=args.profile or "sdm630",
        seed=args.seed if args.seed is not None else 0,
        host=args.host or "127.0.0.1",
        per_bus=args.per_bus if args.per_bus is not None else MAX_UNIT_ID,
        prosumer_share=args.prosumer_share if args.prosumer_share is not None else 0.3,
        timezone=args.timezone or "UTC",
        update_interval=args.interval if args.interval is not None else 1.0,
        control=_control(args, ControlConfig()),
        state_file=args.state,
        state_interval=args.state_interval if args.state_interval is not None else 10.0,
    )


def _describe(sim: Simulator) -> str:
    lines = [f"segs sim: {len(sim.config.meters)} meters on {len(sim.buses)} bus(es)"]
    for bus in sim.buses:
        units = sorted(bus.router.units)
        span = f"unit ids {units[0]}..{units[-1]} ({len(units)} meters)" if units else "no meters"
        lines.append(f"  {bus.bus.id}: modbus {bus.bus.transport} {bus.endpoint}, {span}")
    if sim.control is not None:
        lines.append(f"  control API: http://{sim.control.host}:{sim.control.port}")
    if sim.config.state_file is not None:
        lines.append(f"  state file: {sim.config.state_file}")
    lines.append("ready")
    return "\n".join(lines)


async def _serve(config: SimConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with Simulator(config) as sim:
            print(_describe(sim), flush=True)
            await stop.wait()
    except SimError as exc:
        print(f"segs sim: error: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    print("segs sim: stopped", flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``segs sim``; return the exit code."""
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = config_from_args(args)
    except SimError as exc:
        print(f"segs sim: error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(config))
