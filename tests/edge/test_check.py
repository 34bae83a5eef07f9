"""``segs edge check``: the installer's table and exit code, against the real simulator.

``segs.cli.main`` runs its own event loop, so it runs in a worker thread while the
simulator serves from the test's loop.
"""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

import pytest

from segs.cli import main
from segs.edge.samples import sample_from_values
from segs.sim.app import Simulator
from segs.sim.config import ControlConfig, quick_config
from segs.sim.faults import OfflineFault

pytestmark = pytest.mark.usefixtures("clean_env")


def simulator(clock: Any, profile: str = "mixed") -> Simulator:
    config = quick_config(
        3, 0, profile=profile, seed=7, update_interval=3600.0, control=ControlConfig(enabled=False)
    )
    return Simulator(config, clock=clock)


def write_config(tmp_path: Path, port: int, meters: list[tuple[str, str, int]]) -> Path:
    text = textwrap.dedent(
        f"""\
        gateway_id = "gw-site-1"
        region = "region-1"

        [[buses]]
        name = "bus-1"
        kind = "tcp"
        host = "127.0.0.1"
        port = {port}
        timeout_s = 0.2
        """
    )
    for meter, profile, unit in meters:
        text += (
            f'\n[[meters]]\nid = "{meter}"\nprofile = "{profile}"\nbus = "bus-1"\nunit = {unit}\n'
        )
    path = tmp_path / "edge.toml"
    path.write_text(text, encoding="utf-8")
    return path


async def check(*args: str) -> int:
    return await asyncio.to_thread(main, ["edge", "check", *args])


def rows(output: str) -> dict[str, str]:
    """Table rows by meter id."""
    return {line.split()[0]: line for line in output.splitlines() if line.startswith("MTR-")}


async def test_one_good_and_one_offline_meter_exit_1(
    sim_clock: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with simulator(sim_clock, profile="sdm630") as sim:
        path = write_config(
            tmp_path,
            sim.bus_port("bus-1"),
            [("MTR-00000001", "sdm630", 1), ("MTR-00000002", "sdm630", 2)],
        )
        sim.inject("MTR-00000002", OfflineFault(kind="offline"))
        code = await check("--config", str(path), "--timeout", "0.3")
        truth = sim.meter_state("MTR-00000001")["values"]
    out = capsys.readouterr().out
    assert code == 1
    header = out.splitlines()[0].split()
    assert header[:3] == ["meter", "bus/unit", "profile"]
    assert header[-1] == "status"
    for column in ("V", "I", "kW", "PF", "Hz", "import", "export"):
        assert column in header
    table = rows(out)
    good, bad = table["MTR-00000001"], table["MTR-00000002"]
    assert good.split()[1:3] == ["bus-1/1", "sdm630"]
    assert good.endswith("ok")
    assert f"{truth['frequency']:.2f}" in good
    assert f"{truth['import_energy']:.2f}" in good
    assert bad.split()[1:3] == ["bus-1/2", "sdm630"]
    assert bad.endswith("no answer (timeout 0.3 s)")
    assert "2 meters: 1 ok, 1 failed" in out


async def test_every_meter_good_exits_0(
    sim_clock: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meters = [
        ("MTR-00000001", "sdm630", 1),
        ("MTR-00000002", "sdm120", 2),
        ("MTR-00000003", "sunspec203", 3),
    ]
    async with simulator(sim_clock) as sim:
        path = write_config(tmp_path, sim.bus_port("bus-1"), meters)
        code = await check("--config", str(path))
        states = {meter: sim.meter_state(meter) for meter, _, _ in meters}
    out = capsys.readouterr().out
    assert code == 0, out
    table = rows(out)
    for meter, profile, unit in meters:
        cells = table[meter].split()
        assert cells[1:3] == [f"bus-1/{unit}", profile]
        assert cells[-1] == "ok"
        truth = sample_from_values(meter, 0.0, states[meter]["values"], states[meter]["phases"])
        volts, amps, kw, pf, hz, imported, exported = map(float, cells[3:10])
        assert volts == pytest.approx(truth.voltage_v, abs=0.1)
        assert amps == pytest.approx(truth.current_a, abs=0.01)
        assert kw == pytest.approx(truth.power_kw, abs=0.002)
        assert pf == pytest.approx(truth.power_factor, abs=0.01)
        assert hz == pytest.approx(truth.frequency_hz, abs=0.01)
        assert imported == pytest.approx(truth.import_kwh, abs=0.01)
        assert exported == pytest.approx(truth.export_kwh, abs=0.01)
    assert "3 meters: 3 ok, 0 failed" in out


async def test_a_wrong_profile_shows_as_a_partial_read(
    sim_clock: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with simulator(sim_clock) as sim:
        # Meter 2 is an SDM120: the SDM630's per-phase block at 200 is not on its map.
        path = write_config(tmp_path, sim.bus_port("bus-1"), [("MTR-00000002", "sdm630", 2)])
        code = await check("--config", str(path))
    out = capsys.readouterr().out
    assert code == 1
    assert rows(out)["MTR-00000002"].endswith("partial: Modbus exception 2 (illegal data address)")


async def test_a_gateway_that_is_down_fails_every_meter_on_it(
    tmp_path: Path, free_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(
        tmp_path, free_port, [("MTR-00000001", "sdm630", 1), ("MTR-00000002", "sdm120", 2)]
    )
    code = await check("--config", str(path))
    out = capsys.readouterr().out
    assert code == 1
    for row in rows(out).values():
        assert row.endswith(f"cannot connect to 127.0.0.1:{free_port}")
    assert "2 meters: 0 ok, 2 failed" in out


def test_a_bad_config_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, 5020, [("MTR-00000001", "sdm630", 300)])
    code = main(["edge", "check", "--config", str(path)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert f"{path}: meters[0].unit: " in captured.err
    code = main(["edge", "check", "--config", str(tmp_path / "missing.toml")])
    assert code == 2
    assert "missing.toml: cannot read" in capsys.readouterr().err


def test_run_refuses_a_bad_config_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, 5020, [("MTR-00000001", "sdm999", 1)])
    assert main(["edge", "run", "--config", str(path)]) == 2
    assert f"{path}: meters[0].profile: " in capsys.readouterr().err
