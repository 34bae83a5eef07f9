"""``segs edge run`` as a real process: killed with SIGKILL mid-stream, stopped with SIGTERM/SIGINT.

The agent runs as ``python -m segs edge run --config edge.toml`` against the
simulator (in this process, free ports), a real Mosquitto and the acking hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from services import MosquittoBroker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from testhub import (
    AckingHub,
    edge_toml,
    energy_consistent,
    gaps,
    outbox_rows,
    running_sim,
    starts,
    wait_for,
)

from segs.protocol import ConnectionState

pytestmark = pytest.mark.usefixtures("clean_env")

W = 2
"""Window length of these tests (``edge_toml``'s default), s."""


@contextlib.contextmanager
def agent_process(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``segs edge run`` in a subprocess, its log appended to ``log``; killed if still running."""
    with log.open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "segs", "edge", "run", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_sigkill_mid_stream_loses_nothing_and_the_seq_continues(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    log = tmp_path / "agent.log"
    async with running_sim(3) as sim, AckingHub(mosquitto.host, mosquitto.port) as hub:
        config = tmp_path / "edge.toml"
        config.write_text(edge_toml(data, sim=sim, mqtt_url=mosquitto.url))
        meters = [m.id for m in sim.config.meters]
        with agent_process(config, log) as first:
            await wait_for(lambda: len(hub.windows) >= 6, within=20, what="first windows")
            hub.pause_acks()  # so the outbox holds unacknowledged batches at the kill
            await wait_for(lambda: len(outbox_rows(data)) >= 2, within=10, what="a backlog")
            first.kill()
            await asyncio.to_thread(first.wait)
        killed_at = time.time()
        held = outbox_rows(data)
        seen_before = set(hub.seqs)
        # The broker saw the connection die: the will says offline (without a time).
        await wait_for(
            lambda: hub.states and hub.states[-1].state is ConnectionState.OFFLINE,
            within=5,
            what="the will",
        )
        assert hub.states[-1].at is None
        await hub.resume_acks()  # nobody listens: these acks are lost, the batches resent

        restarted_at = time.time()
        with agent_process(config, log) as second:
            await wait_for(
                lambda: (
                    not outbox_rows(data)
                    and all(starts(hub.windows_of(m))[-1] > killed_at + 2 * W for m in meters)
                ),
                within=20,
                what="the backlog and windows after the restart",
            )
            second.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(second.wait, 10) == 0

    # Nothing lost: every batch stored before the kill reached the hub.
    assert {row[0] for row in held} <= hub.seqs
    # The seq continues: every batch of the second run has a higher seq than any before.
    old = seen_before | {row[0] for row in held}
    new = hub.seqs - old
    assert new
    assert min(new) > max(old)
    # Windows: each meter's windows have a gap only while no agent ran, and the
    # first window after the restart carries the downtime's energy (counters kept).
    for meter in meters:
        windows = hub.windows_of(meter)
        assert energy_consistent(windows) == [], meter
        for start in gaps(windows):
            assert killed_at - 2 * W <= start <= restarted_at + 2 * W, (meter, start)
    assert len(hub.births) >= 2
    assert hub.births[-1].started_at > hub.births[0].started_at


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_stop_signal_flushes_and_exits_0_within_seconds(
    mosquitto: MosquittoBroker, tmp_path: Path, signum: signal.Signals
) -> None:
    data = tmp_path / "data"
    log = tmp_path / "agent.log"
    async with running_sim(2) as sim, AckingHub(mosquitto.host, mosquitto.port) as hub:
        config = tmp_path / "edge.toml"
        config.write_text(edge_toml(data, sim=sim, mqtt_url=mosquitto.url))
        with agent_process(config, log) as process:
            await wait_for(lambda: len(hub.windows) >= 2, within=20, what="windows")
            asked = time.monotonic()
            process.send_signal(signum)
            code = await asyncio.to_thread(process.wait, 10)
            took = time.monotonic() - asked
        await wait_for(
            lambda: hub.states[-1].state is ConnectionState.OFFLINE, within=5, what="offline"
        )
    assert code == 0
    assert took < 3.0
    # A clean goodbye: "offline" with a time (the will has none) ...
    assert hub.states[-1].at is not None
    # ... and a cleanly closed outbox: WAL checkpointed and removed, the file intact.
    assert not (data / "outbox.db-wal").exists()
    with contextlib.closing(sqlite3.connect(data / "outbox.db")) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    text = log.read_text()
    assert f"received {signum.name}" in text
    assert "stopped; outbox:" in text
    assert "Traceback" not in text
