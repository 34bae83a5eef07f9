"""Load benchmark of the meter simulator: CPU and memory at 1,000 meters, idle and fully polled.

Runs ``segs sim`` with ``--meters`` meters on ``--buses`` buses in a subprocess and
measures it from outside (``/proc/PID/stat`` utime+stime, ``/proc/PID/status``
VmRSS/VmHWM) and from inside (``GET /stats``: CPU time of the update loop):

1. idle for ``--idle`` seconds (the update loop alone, once per second);
2. polled for ``--polled`` seconds: a separate client process reads every meter
   once per second with its profile's block reads (the edge's read plan), one
   request at a time per bus, over plain Modbus TCP.

Prints a table; with ``--write FILE`` also puts the results, the command and the
machine into FILE between the ``sim_load`` markers (``docs/benchmarks.md``).

    python benchmarks/sim_load.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _bench import cpu_seconds, machine, machine_line, memory_kib, spawn_sim, stop, write_section

from segs.protocol.profiles import load_profile

BEGIN = "<!-- sim_load:begin -->"
END = "<!-- sim_load:end -->"


# --- measuring a process -----------------------------------------------------------------------


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback only
        return json.load(response)


@dataclass
class Window:
    """What one phase measured."""

    name: str
    seconds: float
    cpu_percent: float
    update_cpu_percent: float
    update_mean_ms: float
    update_max_ms: float
    rss_mib: float
    peak_mib: float
    requests_per_second: float = 0.0
    client: dict[str, Any] | None = None


def measure(name: str, pid: int, control: str, seconds: float) -> Window:
    """Measure ``pid`` for ``seconds``: its CPU share, its update loop's share, its memory."""
    stats0, cpu0, wall0 = get_json(f"{control}/stats"), cpu_seconds(pid), time.monotonic()
    rss_samples = []
    while time.monotonic() - wall0 < seconds:
        time.sleep(1.0)
        rss_samples.append(memory_kib(pid)[0])
    stats1, cpu1, wall1 = get_json(f"{control}/stats"), cpu_seconds(pid), time.monotonic()
    wall = wall1 - wall0
    update0, update1 = stats0["update"], stats1["update"]
    steps = update1["steps"] - update0["steps"]
    requests = sum(b["requests"] for b in stats1["buses"]) - sum(
        b["requests"] for b in stats0["buses"]
    )
    _, peak = memory_kib(pid)
    return Window(
        name=name,
        seconds=wall,
        cpu_percent=100.0 * (cpu1 - cpu0) / wall,
        update_cpu_percent=100.0
        * (update1["total_cpu_seconds"] - update0["total_cpu_seconds"])
        / wall,
        update_mean_ms=1000.0
        * (update1["total_seconds"] - update0["total_seconds"])
        / max(steps, 1),
        update_max_ms=1000.0 * update1["max_seconds"],
        rss_mib=max(rss_samples) / 1024.0,
        peak_mib=peak / 1024.0,
        requests_per_second=requests / wall,
    )


# --- the polling client (a separate process) ---------------------------------------------------


async def poll_bus(
    host: str, port: int, meters: list[tuple[int, list[tuple[int, int, int]]]], until: float
) -> dict[str, Any]:
    """Poll every meter of one bus once per second with raw Modbus TCP until ``until``."""
    reader, writer = await asyncio.open_connection(host, port)
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors = rounds = late_rounds = 0
    tid = 0
    next_round = loop.time()
    while loop.time() < until:
        started = loop.time()
        for unit, blocks in meters:
            for code, address, count in blocks:
                tid = (tid + 1) & 0xFFFF
                sent = loop.time()
                writer.write(struct.pack(">HHHBBHH", tid, 0, 6, unit, code, address, count))
                header = await reader.readexactly(7)
                answer_tid, _, length, _ = struct.unpack(">HHHB", header)
                body = await reader.readexactly(length - 1)
                latencies.append(loop.time() - sent)
                if answer_tid != tid or body[0] != code or body[1] != 2 * count:
                    errors += 1
        rounds += 1
        late_rounds += loop.time() - started > 1.0
        next_round += 1.0
        await asyncio.sleep(max(0.0, next_round - loop.time()))
    writer.close()
    await writer.wait_closed()
    return {"latencies": latencies, "errors": errors, "rounds": rounds, "late": late_rounds}


async def client_main(plan: list[dict[str, Any]], seconds: float) -> None:
    until = asyncio.get_running_loop().time() + seconds
    results = await asyncio.gather(
        *(poll_bus(bus["host"], bus["port"], bus["meters"], until) for bus in plan)
    )
    latencies = sorted(x for r in results for x in r["latencies"])
    print(
        json.dumps(
            {
                "requests": len(latencies),
                "errors": sum(r["errors"] for r in results),
                "rounds": min(r["rounds"] for r in results),
                "late_rounds": sum(r["late"] for r in results),
                "latency_p50_ms": 1000 * statistics.median(latencies),
                "latency_p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
                "latency_max_ms": 1000 * latencies[-1],
            }
        )
    )


def read_plan(control: str, host: str, ports: dict[str, int]) -> list[dict[str, Any]]:
    """Every meter's unit id and block reads, per bus, from the simulator's own truth."""
    buses: dict[str, list[tuple[int, list[tuple[int, int, int]]]]] = {}
    for meter in get_json(f"{control}/meters"):
        blocks = [
            (b.function_code, b.address, b.count) for b in load_profile(meter["profile"]).blocks
        ]
        buses.setdefault(meter["bus"], []).append((meter["unit_id"], blocks))
    return [{"host": host, "port": ports[bus], "meters": meters} for bus, meters in buses.items()]


# --- orchestration -----------------------------------------------------------------------------


def free_ports(count: int) -> int:
    """A base port with ``count`` consecutive free ports after it."""
    for base in range(21000, 60000, 97):
        try:
            for port in range(base, base + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range")


def run(args: argparse.Namespace) -> tuple[list[Window], dict[str, Any]]:
    per_bus = -(-args.meters // args.buses)
    base = free_ports(args.buses + 1)
    control_port = base + args.buses
    control = f"http://127.0.0.1:{control_port}"
    command = [
        sys.executable, "-m", "segs", "sim", "--meters", str(args.meters), "--port", str(base),
        "--per-bus", str(per_bus), "--profile", "mixed", "--seed", "1",
        "--control-port", str(control_port), "--log-level", "warning",
    ]  # fmt: skip
    sim, banner = spawn_sim(command)
    try:
        ports = {
            match.group(1): int(match.group(2))
            for match in re.finditer(r"(bus-\d+): modbus tcp [\d.]+:(\d+)", banner)
        }
        time.sleep(args.warmup)
        idle = measure("idle", sim.pid, control, args.idle)

        plan_file = Path(tempfile.gettempdir()) / f"sim_load_plan_{os.getpid()}.json"
        plan_file.write_text(json.dumps(read_plan(control, "127.0.0.1", ports)))
        client = subprocess.Popen(
            [sys.executable, __file__, "--client", str(plan_file),
             "--client-seconds", str(args.polled + 2 * args.warmup)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(args.warmup)
        client_cpu0 = cpu_seconds(client.pid)
        polled = measure("polled", sim.pid, control, args.polled)
        client_cpu = (cpu_seconds(client.pid) - client_cpu0) / polled.seconds * 100.0
        out, _ = client.communicate(timeout=args.polled + 60)
        polled.client = {**json.loads(out), "cpu_percent": client_cpu}
        plan_file.unlink(missing_ok=True)
    finally:
        stop(sim)
    printable = [Path(sys.executable).name, *command[1:]]
    printable[printable.index("--port") + 1] = "P"
    printable[printable.index("--control-port") + 1] = "C"
    return [idle, polled], {"command": shlex.join(printable), **machine()}


def table(windows: list[Window]) -> str:
    lines = [
        (
            "| phase | seconds | process CPU (% of one core) | update loop CPU (% of one core) "
            "| update step mean / max (ms) | RSS max (MiB) | Modbus requests/s |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {w.name} | {w.seconds:.0f} | {w.cpu_percent:.1f} | {w.update_cpu_percent:.2f} "
        f"| {w.update_mean_ms:.2f} / {w.update_max_ms:.2f} | {w.rss_mib:.0f} "
        f"| {w.requests_per_second:.0f} |"
        for w in windows
    ]
    return "\n".join(lines)


def render(args: argparse.Namespace, windows: list[Window], info: dict[str, Any]) -> str:
    polled = windows[1]
    client = polled.client or {}
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    return "\n".join(
        [
            BEGIN,
            (
                f"Measured {date} with `python benchmarks/sim_load.py --meters {args.meters} "
                f"--buses {args.buses} --idle {args.idle:g} --polled {args.polled:g} "
                "--write docs/benchmarks.md`, which ran:"
            ),
            "",
            "```",
            info["command"],
            "```",
            "",
            machine_line(info),
            "",
            table(windows),
            "",
            (
                "Polling client (separate process, raw Modbus TCP, one request at a time per "
                f"bus): {client.get('requests', 0)} block reads, "
                f"{client.get('errors', 0)} bad answers, "
                f"{client.get('late_rounds', 0)} of the per-bus rounds took longer than 1 s; "
                f"latency p50 {client.get('latency_p50_ms', 0):.2f} ms, "
                f"p99 {client.get('latency_p99_ms', 0):.2f} ms, "
                f"max {client.get('latency_max_ms', 0):.2f} ms; "
                f"the client itself used {client.get('cpu_percent', 0):.0f} % of a core."
            ),
            END,
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--buses", type=int, default=5)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds measured idle")
    parser.add_argument("--polled", type=float, default=30.0, help="seconds measured polled")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--write", type=Path, help="put the results into this markdown file")
    parser.add_argument("--client", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--client-seconds", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client is not None:
        asyncio.run(client_main(json.loads(args.client.read_text()), args.client_seconds))
        return 0
    windows, info = run(args)
    print(table(windows))
    print(json.dumps({"client": windows[1].client, **info}, indent=2))
    if args.write is not None:
        write_section(args.write, render(args, windows, info), begin=BEGIN, end=END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
