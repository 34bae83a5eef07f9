"""Edge agent benchmark: CPU and memory polling 32 SDM630 meters at 1 Hz with 60 s windows.

Starts, each in its own process: a private Mosquitto on a free port (as the
tests do, ``tests/services.py``), ``segs sim`` with ``--meters`` SDM630 meters on
one Modbus TCP bus, and ``segs edge run`` with a config that polls every meter
every ``--poll`` seconds into ``--window`` s windows. A small acking hub
(``tests/edge/testhub.py``) runs in this process, so the agent's outbox is
drained as in production. After ``--warmup`` seconds the agent is measured from
outside for ``--seconds``: CPU from ``/proc/PID/stat`` (utime + stime), memory
from ``/proc/PID/status`` (VmRSS sampled every second, VmHWM at the end).
Finally the agent gets SIGTERM; its exit code and how long it took are reported.

    python benchmarks/edge_poll.py --write docs/benchmarks.md
    python benchmarks/edge_poll.py --seconds 60 --profile-out /tmp/agent.prof   # cProfile

Targets (issue 4): at most 3 % of one core and 50 MB RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _bench import cpu_seconds, machine, machine_line, memory_kib, spawn_sim, stop, write_section

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "edge")]

from services import MosquittoBroker  # noqa: E402
from testhub import AckingHub  # noqa: E402

BEGIN = "<!-- edge_poll:begin -->"
END = "<!-- edge_poll:end -->"


def start_sim(meters: int) -> tuple[subprocess.Popen[str], int]:
    """``segs sim`` with ``meters`` SDM630 meters on one bus; return it and its port."""
    command = [
        sys.executable, "-m", "segs", "sim", "--meters", str(meters), "--port", "0",
        "--profile", "sdm630", "--seed", "1", "--no-control", "--log-level", "warning",
    ]  # fmt: skip
    sim, banner = spawn_sim(command)
    match = re.search(r"bus-1: modbus tcp [\d.]+:(\d+)", banner)
    if match is None:
        raise RuntimeError("no bus port in the banner:\n" + banner)
    return sim, int(match.group(1))


def edge_config(work: Path, *, meters: int, port: int, mqtt_url: str, args: Any) -> Path:
    """Write the agent's ``edge.toml`` for ``meters`` SDM630 units on the simulator's bus."""
    lines = [
        'gateway_id = "gw-bench-01"',
        'region = "region-1"',
        f"window_seconds = {args.window}",
        f"poll_interval_s = {args.poll}",
        f'data_dir = "{work / "data"}"',
        'log_level = "warning"',
        "",
        "[mqtt]",
        f'url = "{mqtt_url}"',
        "",
        "[[buses]]",
        'name = "bus-1"',
        'kind = "tcp"',
        'host = "127.0.0.1"',
        f"port = {port}",
    ]
    for unit in range(1, meters + 1):
        lines += [
            "",
            "[[meters]]",
            f'id = "MTR-{unit:08d}"',
            'profile = "sdm630"',
            'bus = "bus-1"',
            f"unit = {unit}",
        ]
    path = work / "edge.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run everything, measure the agent, stop it; return the figures."""
    work = Path(tempfile.mkdtemp(prefix="segs-edge-bench-"))
    broker = MosquittoBroker(work / "mosquitto")
    broker.start()
    sim, port = start_sim(args.meters)
    agent: subprocess.Popen[bytes] | None = None
    try:
        config = edge_config(work, meters=args.meters, port=port, mqtt_url=broker.url, args=args)
        async with AckingHub(broker.host, broker.port, hub_id="hub-bench") as hub:
            runner = [sys.executable]
            if args.profile_out is not None:
                runner += ["-m", "cProfile", "-o", str(args.profile_out)]
            command = [*runner, "-m", "segs", "edge", "run", "--config", str(config)]
            agent = subprocess.Popen(command, stderr=subprocess.PIPE)  # noqa: ASYNC220 - at once
            await asyncio.sleep(args.warmup)
            pid = agent.pid
            cpu0, wall0 = cpu_seconds(pid), time.monotonic()
            windows0 = len(hub.windows)
            rss: list[int] = []
            while time.monotonic() - wall0 < args.seconds:
                await asyncio.sleep(1.0)
                rss.append(memory_kib(pid)[0])
            cpu1, wall1 = cpu_seconds(pid), time.monotonic()
            _, peak = memory_kib(pid)
            windows = len(hub.windows) - windows0
            stopped = time.monotonic()
            agent.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(agent.wait, 30)
            stop_s = time.monotonic() - stopped
            stderr = agent.stderr.read().decode() if agent.stderr else ""
            quality = sum(1 for w in hub.windows.values() if w.quality)
            wall = wall1 - wall0
            return {
                "seconds": wall,
                "cpu_percent": 100.0 * (cpu1 - cpu0) / wall,
                "rss_mib": max(rss) / 1024.0,
                "rss_mean_mib": sum(rss) / len(rss) / 1024.0,
                "peak_mib": peak / 1024.0,
                "windows_measured": windows,
                "windows_total": len(hub.windows),
                "windows_flagged": quality,
                "duplicates": hub.duplicates,
                "exit_code": code,
                "stop_seconds": stop_s,
                "stderr_tail": stderr.splitlines()[-5:],
            }
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
        stop(sim)
        broker.stop()


def render(args: argparse.Namespace, result: dict[str, Any], info: dict[str, str]) -> str:
    """The markdown section for ``docs/benchmarks.md``."""
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    return "\n".join(
        [
            BEGIN,
            (
                f"Measured {date} with `python benchmarks/edge_poll.py --meters {args.meters} "
                f"--poll {args.poll:g} --window {args.window} --seconds {args.seconds:g} "
                "--write docs/benchmarks.md`, which runs "
                "`python -m segs edge run --config edge.toml` against "
                f"`segs sim --meters {args.meters} --profile sdm630`, a private Mosquitto and "
                "the acking test hub."
            ),
            "",
            machine_line(info),
            "",
            (
                "| meters | poll | window | measured | agent CPU (% of one core) "
                "| RSS max / mean (MiB) | VmHWM (MiB) | windows delivered | SIGTERM → exit |"
            ),
            "|---|---|---|---|---|---|---|---|---|",
            (
                f"| {args.meters} SDM630 | {args.poll:g} s | {args.window} s "
                f"| {result['seconds']:.0f} s | **{result['cpu_percent']:.2f}** "
                f"| **{result['rss_mib']:.1f}** / {result['rss_mean_mib']:.1f} "
                f"| {result['peak_mib']:.1f} | {result['windows_total']} "
                f"({result['duplicates']} duplicates) "
                f"| {result['stop_seconds']:.2f} s, exit {result['exit_code']} |"
            ),
            END,
        ]
    )


def main() -> int:
    """Run the benchmark; print the figures; optionally write them into a markdown file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--meters", type=int, default=32)
    parser.add_argument("--poll", type=float, default=1.0, help="poll interval, s")
    parser.add_argument("--window", type=int, default=60, help="window length, s")
    parser.add_argument("--seconds", type=float, default=120.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before measuring")
    parser.add_argument("--profile-out", type=Path, help="run the agent under cProfile")
    parser.add_argument("--write", type=Path, help="put the results into this markdown file")
    args = parser.parse_args()
    result = asyncio.run(measure(args))
    info = machine()
    print(json.dumps({**result, **info}, indent=2))
    if args.write is not None:
        write_section(args.write, render(args, result, info), begin=BEGIN, end=END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
