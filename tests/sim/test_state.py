"""Energy counters persist across restarts through an atomically written state file."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from simtools import modbus_client, read_profile
from testkit import FakeClock

from segs.protocol.profiles import load_profile
from segs.sim.app import Simulator
from segs.sim.exceptions import StateFileError
from segs.sim.physics import COUNTERS
from segs.sim.state import load_state, save_state


def test_save_and_load_round_trip_exactly_and_leave_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "state.json"
    rows = [[1234.5678901234, 1.0, 2.0, 3.0]] * len(COUNTERS)
    save_state(path, {"MTR-1": rows}, saved_at=1.0)
    save_state(path, {"MTR-1": rows, "MTR-2": rows}, saved_at=2.0)
    assert load_state(path) == {"MTR-1": rows, "MTR-2": rows}
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]
    assert load_state(tmp_path / "absent.json") == {}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not valid JSON"),
        ('{"version": 99}', "not a version 1 state file"),
        ('{"version": 1, "counters": ["x"], "meters": {}}', "does not hold the counters"),
        (
            json.dumps({"version": 1, "counters": list(COUNTERS), "meters": {"M": [[1, 2]]}}),
            "bad counters for meter 'M'",
        ),
    ],
)
def test_a_broken_state_file_is_refused_with_the_reason(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "state.json"
    path.write_text(content)
    with pytest.raises(StateFileError, match=message):
        load_state(path)


async def test_counters_continue_after_a_restart(
    make_sim: Callable[..., Simulator], clock: FakeClock, tmp_path: Path
) -> None:
    state = tmp_path / "sim-state.json"
    profiles = {1: load_profile("sdm630"), 2: load_profile("sdm120"), 3: load_profile("sunspec203")}
    async with make_sim(3, state_file=state) as sim:
        clock.advance(3600.0)
        sim.update()
        async with modbus_client(sim.bus_port("bus-1")) as client:
            before = {u: await read_profile(client, p, u) for u, p in profiles.items()}
        truth = {m: sim.energy_kwh(m) for m in ("MTR-00000001", "MTR-00000002", "MTR-00000003")}
    assert state.exists()

    clock.advance(10.0)
    async with make_sim(3, state_file=state) as again:
        for meter, energy in truth.items():
            assert again.energy_kwh(meter) == energy
        async with modbus_client(again.bus_port("bus-1")) as client:
            after = {u: await read_profile(client, p, u) for u, p in profiles.items()}
    for unit in profiles:
        assert after[unit]["import_energy"] == before[unit]["import_energy"]
        assert after[unit]["export_energy"] == before[unit]["export_energy"]


async def test_the_state_file_is_saved_on_a_timer_while_running(
    make_sim: Callable[..., Simulator], tmp_path: Path
) -> None:
    state = tmp_path / "sim-state.json"
    async with make_sim(2, state_file=state, state_interval=0.1) as sim:
        for _ in range(100):
            if state.exists():
                break
            await asyncio.sleep(0.05)
        saved = load_state(state)
        assert set(saved) == {"MTR-00000001", "MTR-00000002"}
        assert saved["MTR-00000001"][0][0] == sim.energy_kwh("MTR-00000001")[0]
