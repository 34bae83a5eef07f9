"""Edge agent benchmark: drain 24 h of backlog (32 meters, 60 s windows: 46,080 windows).

1. Fills a fresh outbox as an agent cut off for a day would have: one batch of
   ``--meters`` windows per minute for ``--hours`` hours, created at their
   minute (so the batches are backlog: ``historical = true``).
2. Starts a private Mosquitto on a free port (``tests/services.py``) and the
   acking test hub (``tests/edge/testhub.py``) in a separate process, as the
   real hub would be.
3. Runs the agent's own sender, :class:`segs.edge.link.MqttLink` plus
   :class:`segs.edge.publisher.Publisher` with the agent's defaults (16 batches
   in flight, bursts of 8), and times from its start until the outbox is empty:
   every batch published, decoded and committed by the hub, acknowledged, and
   deleted.

    python benchmarks/edge_backlog.py --write docs/benchmarks.md

Target (issue 4): 24 h for 32 meters in at most 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _bench import machine, machine_line, write_section

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "edge")]

from services import MosquittoBroker  # noqa: E402
from testhub import AckingHub, make_window  # noqa: E402

from segs.edge.config import MqttSettings  # noqa: E402
from segs.edge.link import MqttLink  # noqa: E402
from segs.edge.outbox import Outbox  # noqa: E402
from segs.edge.publisher import Publisher  # noqa: E402
from segs.protocol import GatewayBirth, MeterInfo  # noqa: E402

BEGIN = "<!-- edge_backlog:begin -->"
END = "<!-- edge_backlog:end -->"
GW = "gw-bench-01"


class Clock:
    """The outbox's clock: set by hand while filling, real time while draining."""

    def __init__(self) -> None:
        self.fixed: datetime | None = None

    def __call__(self) -> datetime:
        return self.fixed if self.fixed is not None else datetime.now(UTC)


def fill(outbox: Outbox, clock: Clock, *, meters: int, minutes: int) -> int:
    """One batch of ``meters`` windows per minute, as if the last ``minutes`` were offline."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    first = now - timedelta(minutes=minutes)
    for minute in range(minutes):
        start = first + timedelta(minutes=minute)
        clock.fixed = start + timedelta(seconds=61)
        outbox.add_windows([make_window(m, start) for m in range(1, meters + 1)])
    clock.fixed = None
    return outbox.stats().pending_batches


def birth(outbox: Outbox, meters: int) -> GatewayBirth:
    return GatewayBirth(
        gateway_id=GW,
        region="region-1",
        agent_version="bench",
        started_at=datetime.now(UTC),
        window_seconds=60,
        poll_interval_s=1.0,
        config_hash="0123456789abcdef",
        meters=tuple(
            MeterInfo(meter_id=f"MTR-{m:08d}", profile="sdm630", bus="bus-1", unit_id=m)
            for m in range(1, meters + 1)
        ),
        outbox=outbox.stats(),
    )


async def hub_main(host: str, port: int) -> None:
    """The acking hub in its own process: prints ``ready``, then a JSON summary on SIGTERM."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with AckingHub(host, port, hub_id="hub-bench") as hub:
        print("ready", flush=True)
        await stop.wait()
        print(
            json.dumps(
                {
                    "windows": len(hub.windows),
                    "window_deliveries": hub.window_deliveries,
                    "duplicates": hub.duplicates,
                    "batches": len(hub.deliveries),
                    "historical": sum(1 for d in hub.log if d.historical),
                    "cpu_seconds": time.process_time(),
                }
            ),
            flush=True,
        )


async def drain(outbox: Outbox, broker: MosquittoBroker, meters: int) -> dict[str, Any]:
    """Run the sender until the outbox is empty; return the timings."""
    publisher = Publisher(outbox, gateway_id=GW, window_seconds=60)
    link = MqttLink(
        MqttSettings(url=broker.url, client_id=GW),
        gateway_id=GW,
        birth=lambda: birth(outbox, meters),
        outbox_stats=outbox.stats,
        on_ack=publisher.on_ack,
        on_resend=publisher.on_resend,
        on_hub_state=publisher.on_hub_state,
        on_ready=publisher.on_link_ready,
    )
    cpu0 = time.process_time()
    started = time.monotonic()
    tasks = [asyncio.create_task(link.run()), asyncio.create_task(publisher.run(link))]
    try:
        while outbox.stats().pending_batches:  # noqa: ASYNC110 - the measurement's end
            await asyncio.sleep(0.05)
        seconds = time.monotonic() - started
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "seconds": seconds,
        "sender_cpu_seconds": time.process_time() - cpu0,
        "published": publisher.stats.published,
        "resent": publisher.stats.resent,
        "acked": publisher.stats.acked,
    }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="segs-edge-backlog-"))
    clock = Clock()
    minutes = round(args.hours * 60)
    with Outbox(work / "outbox.db", clock=clock) as outbox:
        filled_at = time.monotonic()
        batches = fill(outbox, clock, meters=args.meters, minutes=minutes)
        fill_s = time.monotonic() - filled_at
        size = outbox.stats().pending_bytes
        broker = MosquittoBroker(work / "mosquitto")
        broker.start()
        hub = subprocess.Popen(  # noqa: ASYNC220 - returns at once; nothing else runs yet
            [sys.executable, __file__, "--hub", f"{broker.host}:{broker.port}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert hub.stdout is not None
            if hub.stdout.readline().strip() != "ready":
                raise RuntimeError("the hub did not start")
            result = await drain(outbox, broker, args.meters)
            hub.send_signal(signal.SIGTERM)
            summary = json.loads(hub.stdout.readline())
            hub.wait(10)
        finally:
            if hub.poll() is None:
                hub.kill()
            broker.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "windows": batches * args.meters,
        "batches": batches,
        "body_mib": size / 2**20,
        "fill_seconds": fill_s,
        **result,
        "hub": summary,
        "bench_process_max_rss_mib": rss,
    }


def render(args: argparse.Namespace, result: dict[str, Any], info: dict[str, str]) -> str:
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    hub = result["hub"]
    return "\n".join(
        [
            BEGIN,
            (
                f"Measured {date} with `python benchmarks/edge_backlog.py --meters {args.meters} "
                f"--hours {args.hours:g} --write docs/benchmarks.md`."
            ),
            "",
            machine_line(info),
            "",
            (
                "| backlog | batches | stored bodies | drained and acknowledged in "
                "| windows/s | sender CPU | hub CPU | windows at the hub |"
            ),
            "|---|---|---|---|---|---|---|---|",
            (
                f"| {args.hours:g} h x {args.meters} meters = {result['windows']:,} windows "
                f"| {result['batches']:,} | {result['body_mib']:.1f} MiB "
                f"| **{result['seconds']:.1f} s** "
                f"| {result['windows'] / result['seconds']:,.0f} "
                f"| {result['sender_cpu_seconds']:.1f} s | {hub['cpu_seconds']:.1f} s "
                f"| {hub['windows']:,} ({hub['duplicates']} duplicates, "
                f"{hub['historical']:,} batches historical) |"
            ),
            END,
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--meters", type=int, default=32)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--write", type=Path, help="put the results into this markdown file")
    parser.add_argument("--hub", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hub is not None:
        host, port = args.hub.rsplit(":", 1)
        asyncio.run(hub_main(host, int(port)))
        return 0
    result = asyncio.run(measure(args))
    info = machine()
    print(json.dumps({**result, **info}, indent=2))
    if args.write is not None:
        write_section(args.write, render(args, result, info), begin=BEGIN, end=END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
