"""The whole edge agent, in process, against the simulator, a real Mosquitto and the acking hub.

Each test runs :class:`segs.edge.agent.Agent` as a task with short windows
(2 s, polled every 0.25 s) and asserts on what the hub received and on the
rows of the agent's outbox file. Waits are bounded (``wait_for``); the only
fixed sleeps are the scenario itself (a broker kept down for a while).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path

import pytest
from services import MosquittoBroker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from testhub import (
    AckingHub,
    edge_settings,
    energy_consistent,
    gaps,
    outbox_rows,
    running_agent,
    running_sim,
    starts,
    step_windows,
    truth_power_and_voltage,
    wait_for,
)

from segs.protocol import QualityFlag
from segs.sim.faults import parse_fault

pytestmark = pytest.mark.usefixtures("clean_env")

W = 2
"""Window length of these tests, s."""
POLL = 0.25


# --- values ---------------------------------------------------------------------------------


async def test_windows_match_the_simulators_truth_and_deltas_sum_to_the_counters(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    # The physics moves only when the test says: once per window, 0.1 s before it
    # starts, so every poll of a window reads the same state and the truth is exact.
    async with (
        running_sim(3, update_interval=3600.0, control=True) as sim,
        AckingHub(mosquitto.host, mosquitto.port) as hub,
    ):
        settings = edge_settings(tmp_path / "data", sim=sim, mqtt_url=mosquitto.url)
        meters = [m.id for m in settings.meters]
        async with running_agent(settings):
            run = await step_windows(sim, meters, window_s=W)
            truth, clean, last = run.states, run.clean, run.last
            await wait_for(
                lambda: all((m, last) in {(w.meter_id, w.window_start.timestamp())
                                          for w in hub.windows.values()} for m in meters),
                within=5,
                what="the last window",
            )  # fmt: skip
        assert len(clean) >= 3, "the test could not keep time"
        for meter in meters:
            windows = {w.window_start.timestamp(): w for w in hub.windows_of(meter)}
            for boundary in clean:
                window = windows[boundary]
                state = truth[meter, boundary]
                power, voltage = truth_power_and_voltage(state)
                assert window.power_avg_kw == pytest.approx(power, rel=0.02, abs=0.002), meter
                assert window.power_min_kw <= window.power_avg_kw <= window.power_max_kw
                assert window.voltage_avg_v == pytest.approx(voltage, rel=0.005), meter
                assert window.import_kwh == pytest.approx(
                    state["values"]["import_energy"], rel=1e-6, abs=0.0011
                ), meter
                assert window.samples_got >= window.samples_expected - 1
                assert window.samples_expected == W / POLL
            # Energy: deltas of consecutive windows add up to the counter difference.
            ordered = hub.windows_of(meter)
            assert energy_consistent(ordered) == []
            total = sum(w.import_delta_kwh for w in ordered[1:])
            assert total == pytest.approx(ordered[-1].import_kwh - ordered[0].import_kwh, abs=1e-9)
            assert total > 0.0
            true_total = (
                truth[meter, clean[-1]]["values"]["import_energy"]
                - truth[meter, clean[0]]["values"]["import_energy"]
            )
            measured = windows[clean[-1]].import_kwh - windows[clean[0]].import_kwh
            assert measured == pytest.approx(true_total, abs=0.0021)


# --- delivery ---------------------------------------------------------------------------------


async def test_broker_down_for_several_windows_every_window_arrives_exactly_once(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    async with running_sim(3) as sim, AckingHub(mosquitto.host, mosquitto.port) as hub:
        settings = edge_settings(data, sim=sim, mqtt_url=mosquitto.url)
        meters = [m.id for m in settings.meters]
        async with running_agent(settings):
            await wait_for(lambda: len(hub.windows) >= 6, within=10, what="first windows")
            await asyncio.to_thread(mosquitto.stop)
            down_at = time.time()
            await asyncio.sleep(3 * W + 0.5)  # the outage: three windows without a broker
            held = outbox_rows(data)
            assert sum(1 for row in held if row[1] == "windows") >= 3
            await asyncio.to_thread(mosquitto.start)
            await hub.wait_connected()
            back_at = time.time()
            await wait_for(
                lambda: (
                    all(starts(hub.windows_of(m))[-1] >= back_at + W for m in meters)
                    and not outbox_rows(data)
                ),
                within=20,
                what="the backlog and new windows",
            )
        for meter in meters:
            windows = hub.windows_of(meter)
            assert gaps(windows) == [], meter
            assert starts(windows)[0] < down_at - W
            assert energy_consistent(windows) == []
        # Everything held during the outage arrived; resends were flagged historical.
        assert {row[0] for row in held} <= hub.seqs
        assert any(d.historical for d in hub.log)
        assert hub.window_deliveries == len(hub.windows) + hub.duplicates


async def test_silent_hub_outbox_grows_batches_are_resent_nothing_deleted_then_drains(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    async with running_sim(2) as sim, AckingHub(mosquitto.host, mosquitto.port) as hub:
        hub.pause_acks()
        settings = edge_settings(data, sim=sim, mqtt_url=mosquitto.url, ack_timeout_s=1.5)
        async with running_agent(settings) as agent:
            await wait_for(
                lambda: any(count >= 2 for count in hub.deliveries.values()),
                within=15,
                what="a resend",
            )
            earlier = outbox_rows(data)
            await wait_for(
                lambda: len(outbox_rows(data)) > len(earlier), within=10, what="a growing outbox"
            )
            rows = outbox_rows(data)
            seqs = [row[0] for row in rows]
            assert seqs == list(range(1, agent.outbox.last_seq + 1))  # nothing deleted
            assert hub.seqs <= set(seqs)
            assert any(row[3] >= 2 for row in rows)  # attempts
            resent = [d for d in hub.log if hub.deliveries[d.seq] >= 2]
            assert any(d.historical for d in resent if d.kind.value == "windows")

            await hub.resume_acks()
            await wait_for(lambda: not outbox_rows(data), within=10, what="the drain")
            assert agent.outbox.stats().pending_batches == 0


async def test_full_outbox_drops_the_oldest_counts_them_and_keeps_running(
    mosquitto: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="segs.edge.outbox")
    data = tmp_path / "data"
    async with running_sim(2) as sim, AckingHub(mosquitto.host, mosquitto.port) as hub:
        hub.pause_acks()
        settings = edge_settings(data, sim=sim, mqtt_url=mosquitto.url, outbox={"max_batches": 3})
        async with running_agent(settings, stats_interval_s=0.5) as agent:
            await wait_for(
                lambda: any(s.outbox and s.outbox.dropped_batches >= 2 for s in hub.states),
                within=20,
                what="a state reporting drops",
            )
            rows = outbox_rows(data)
            assert len(rows) <= 3
            last = agent.outbox.last_seq
            assert [row[0] for row in rows] == list(range(last - len(rows) + 1, last + 1))
            stats = agent.outbox.stats()
            assert stats.dropped_batches >= 2
            assert stats.dropped_windows >= 1
            assert any("dropped the" in r.getMessage() for r in caplog.records)

            # Still running: once the hub acks again, new windows arrive and the outbox drains.
            windows_before = len(hub.windows)
            await hub.resume_acks()
            await wait_for(
                lambda: len(hub.windows) >= windows_before + 4 and not outbox_rows(data),
                within=15,
                what="windows after the drops",
            )


# --- meters ---------------------------------------------------------------------------------


async def test_meter_faults_leave_the_agent_and_the_other_meters_alone(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    # One meter per bus, as on six RS-485 lines: a fault on one cannot slow the others.
    async with (
        running_sim(6, profile="sdm630", per_bus=1) as sim,
        AckingHub(mosquitto.host, mosquitto.port) as hub,
    ):
        settings = edge_settings(tmp_path / "data", sim=sim, mqtt_url=mosquitto.url)
        offline, exception, garbage, slow, reset, healthy = (m.id for m in settings.meters)
        async with running_agent(settings):
            await wait_for(
                lambda: all(len(hub.windows_of(m.id)) >= 2 for m in settings.meters),
                within=10,
                what="two windows of every meter",
            )
            faults = {
                offline: {"kind": "offline"},
                exception: {"kind": "exception", "code": 4},
                garbage: {"kind": "garbage", "mode": "random"},
                slow: {"kind": "slow", "delay_ms": 100},
                reset: {"kind": "counter_reset"},
            }
            for meter, fault in faults.items():
                sim.inject(meter, parse_fault(fault))
            fault_at = time.time()
            await wait_for(
                lambda: (
                    hub.events_of(offline, "meter_offline")
                    and hub.events_of(exception, "meter_offline")
                    and hub.events_of(reset, "counter_reset")
                ),
                within=5,
                what="offline and counter reset events",
            )
            await wait_for(
                lambda: (
                    all(
                        starts(hub.windows_of(m))[-1] >= fault_at + 2 * W
                        for m in (slow, reset, healthy)
                    )
                    and any(
                        QualityFlag.INVALID_VALUES_DROPPED in w.quality
                        for w in hub.windows_of(garbage)
                    )
                ),
                within=10,
                what="windows after the faults",
            )
            sim.clear(offline)
            cleared_at = time.time()
            await wait_for(
                lambda: (
                    hub.events_of(offline, "meter_online")[-1].at.timestamp() > cleared_at - 1
                    and starts(hub.windows_of(offline))[-1] > cleared_at
                ),
                within=10,
                what="the offline meter back",
            )

        def flags(meter: str) -> set[QualityFlag]:
            return {flag for w in hub.windows_of(meter) for flag in w.quality}

        # The healthy meter saw none of it.
        for window in hub.windows_of(healthy)[1:]:
            assert window.quality == (), window
            assert window.samples_got == window.samples_expected
        assert [e.kind.value for e in hub.events_of(healthy)] == ["meter_online"]
        # Offline: an event with the reason, a flagged window, back online later.
        (went,) = hub.events_of(offline, "meter_offline")
        assert "no answer" in went.error  # type: ignore[union-attr]
        back = hub.events_of(offline, "meter_online")[-1]
        assert back.offline_seconds > 0  # type: ignore[union-attr, operator]
        assert QualityFlag.METER_OFFLINE in flags(offline)
        # A Modbus exception on every read: offline, and the event says which exception.
        (failed,) = hub.events_of(exception, "meter_offline")
        assert "exception 4" in failed.error  # type: ignore[union-attr]
        # Garbage: samples dropped and flagged (windows of garbage only are not produced),
        # no false events, still online.
        assert QualityFlag.INVALID_VALUES_DROPPED in flags(garbage)
        assert [e.kind.value for e in hub.events_of(garbage)] == ["meter_online"]
        # Slow but within the timeout: fewer samples, never offline.
        assert not hub.events_of(slow, "meter_offline")
        assert any(QualityFlag.PARTIAL in w.quality for w in hub.windows_of(slow))
        # Counter reset: flagged once, deltas never negative and without the jump.
        (event,) = hub.events_of(reset, "counter_reset")
        assert event.import_kwh < event.previous_import_kwh  # type: ignore[union-attr]
        reset_windows = [w for w in hub.windows_of(reset) if QualityFlag.COUNTER_RESET in w.quality]
        assert len(reset_windows) == 1
        assert all(0.0 <= w.import_delta_kwh < 0.1 for w in hub.windows_of(reset))


async def test_a_spike_at_the_simulator_is_published_within_two_poll_intervals(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    poll = 0.5
    async with (
        running_sim(1, profile="sdm630", update_interval=3600.0) as sim,
        AckingHub(mosquitto.host, mosquitto.port) as hub,
    ):
        settings = edge_settings(
            tmp_path / "data", sim=sim, mqtt_url=mosquitto.url, poll_interval_s=poll
        )
        meter = settings.meters[0].id
        async with running_agent(settings):
            # Past the detector's warm-up (5 samples) on a steady load.
            await wait_for(lambda: len(hub.windows_of(meter)) >= 2, within=10, what="warm-up")
            sim.inject(meter, parse_fault({"kind": "spike", "factor": 20, "seconds": 30}))
            sim.update()  # the spike is on the wire from now on
            injected = time.monotonic()
            await wait_for(
                lambda: hub.events_of(meter, "power_spike"), within=5, what="the spike event"
            )
        ((key, arrived),) = [(k, t) for k, t in hub.event_arrivals.items() if k[1] == "power_spike"]
        assert arrived - injected <= 2 * poll
        (spike,) = hub.events_of(meter, "power_spike")
        assert spike.ratio > settings.spike_ratio  # type: ignore[union-attr]
        assert spike.power_kw == pytest.approx(  # type: ignore[union-attr]
            sim.meter_state(meter)["values"]["power_total"], rel=1e-3
        )
        assert key[0] == meter
