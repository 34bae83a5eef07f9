"""Crashes mid-stream: the hub killed with SIGKILL, the broker restarted. Every window once.

Synthetic gateways behave like the edge agent: they keep each batch until the
hub acknowledges it and resend what is pending on every reconnect, whenever the
hub state turns online, and after an ack timeout.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import StartHub
from hubkit import T0, SimMeter, SyntheticGateway, scalar, wait_for, window_batch
from services import MosquittoBroker
from sqlalchemy import Engine

from segs.hub.db.engine import make_engine

MakeGateway = Callable[..., Awaitable[SyntheticGateway]]

GATEWAYS = 3
METERS = 8
BATCHES = 60


def _recent_start() -> datetime:
    """Three hours ago, on a whole minute: in the past for the real clock of a subprocess."""
    now = datetime.now(UTC) - timedelta(hours=3)
    return now.replace(second=0, microsecond=0)


async def _stream(gateways: list[SyntheticGateway], start: datetime, pause: float) -> None:
    """Each gateway sends ``BATCHES`` batches of one window per meter, one minute apart."""
    meters = {
        g.gateway_id: [SimMeter(f"{g.gateway_id}-m{i}", start=start) for i in range(METERS)]
        for g in gateways
    }
    for seq in range(1, BATCHES + 1):
        for gateway in gateways:
            windows = [meter.window(seq - 1) for meter in meters[gateway.gateway_id]]
            await gateway.send(window_batch(gateway.gateway_id, seq, windows))
        await asyncio.sleep(pause)


def _assert_exactly_once(engine: Engine) -> None:
    expected = GATEWAYS * METERS * BATCHES
    assert scalar(engine, "SELECT count(*) FROM meter_windows") == expected
    assert scalar(engine, "SELECT sum(windows) FROM meter_rollups_15m") == expected
    assert scalar(engine, "SELECT sum(windows) FROM meter_rollups_daily") == expected
    assert scalar(engine, "SELECT sum(windows) FROM regional_load") == expected
    assert scalar(engine, "SELECT count(*) FROM meter_gaps") == 0
    assert scalar(engine, "SELECT count(*) FROM dead_letters") == 0
    per_meter = scalar(
        engine,
        "SELECT count(*) FROM meter_rollups_daily WHERE windows <> :n",
        n=BATCHES,
    )
    assert per_meter == 0


class HubProcess:
    """``python -m segs hub run --only ingest`` as a child process."""

    def __init__(self, database_url: str, broker: MosquittoBroker, log: Path) -> None:
        self.env = {
            **os.environ,
            "SEGS_DATABASE_URL": database_url,
            "SEGS_MQTT_URL": broker.url,
            "SEGS_HUB_ID": "hub-crash",
            "SEGS_INGEST_BATCH_MAX_DELAY_S": "0.02",
            "SEGS_LOG_LEVEL": "info",
        }
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "segs", "hub", "run", "--only", "ingest"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            return self.process.wait(20)
        return self.process.returncode


@pytest.fixture
def hub_process(
    database_url: str, mosquitto: MosquittoBroker, tmp_path: Path
) -> Iterator[HubProcess]:
    """A hub subprocess on ``database_url``, killed after the test if still running."""
    hub = HubProcess(database_url, mosquitto, tmp_path / "hub.log")
    yield hub
    if hub.process is not None and hub.process.poll() is None:
        hub.process.kill()
        hub.process.wait()
    print(hub.log.read_text(errors="replace")[-5000:])


async def test_a_hub_killed_mid_stream_loses_and_doubles_nothing(
    hub_process: HubProcess, gateway_factory: MakeGateway, database_url: str
) -> None:
    gateways = [await gateway_factory(f"gw-{g}", ack_timeout_s=5.0) for g in range(GATEWAYS)]
    hub_process.start()
    stream = asyncio.create_task(_stream(gateways, _recent_start(), pause=0.03))
    await wait_for(
        lambda: sum(len(g.acked) for g in gateways) >= GATEWAYS * 15,
        within=30,
        what="the first acks from the hub process",
    )
    hub_process.kill()
    pending_at_kill = sum(len(g.pending) for g in gateways)
    await asyncio.sleep(0.5)  # the stream goes on into the void
    hub_process.start()
    await stream
    for gateway in gateways:
        await gateway.wait_settled(range(1, BATCHES + 1), within=60)
        assert gateway.rejected == set()
    assert pending_at_kill > 0
    assert sum(g.resends for g in gateways) > 0
    assert hub_process.stop() == 0
    engine = make_engine(database_url)
    try:
        _assert_exactly_once(engine)
    finally:
        engine.dispose()


async def test_a_broker_restart_mid_stream_loses_and_doubles_nothing(
    start_hub: StartHub, gateway_factory: MakeGateway, mosquitto: MosquittoBroker
) -> None:
    hub = await start_hub(hub_id="hub-restart")
    gateways = [await gateway_factory(f"gw-{g}", ack_timeout_s=5.0) for g in range(GATEWAYS)]
    stream = asyncio.create_task(_stream(gateways, T0, pause=0.03))
    await wait_for(
        lambda: sum(len(g.acked) for g in gateways) >= GATEWAYS * 15, what="the first acks"
    )
    await asyncio.to_thread(mosquitto.restart)
    await stream
    for gateway in gateways:
        await gateway.wait_settled(range(1, BATCHES + 1), within=60)
        assert gateway.rejected == set()
    assert hub.ingest.stats.connects >= 2
    assert min(g.connects for g in gateways) >= 2
    _assert_exactly_once(hub.store.engine)
