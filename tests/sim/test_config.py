"""Simulator settings: quick start and the TOML form build the same validated object."""

from __future__ import annotations

from pathlib import Path

import pytest

from segs.sim.config import (
    BusConfig,
    ControlConfig,
    MeterConfig,
    RegionConfig,
    SimConfig,
    load_config,
    parse_config,
    quick_config,
)
from segs.sim.exceptions import ConfigError

EXAMPLE = """
seed = 42
update_interval = 0.5
state_file = "state/counters.json"

[control]
port = 3011

[[regions]]
id = "north"
timezone = "Europe/Berlin"
voltage_offset = -2.0

[[buses]]
id = "gw-a"
port = 5020

[[buses]]
id = "line-1"
transport = "rtu"
device = "/dev/ttyUSB0"
baudrate = 19200
parity = "E"

[[meters]]
id = "house-1"
bus = "gw-a"
unit_id = 1
profile = "sdm630"
region = "north"
prosumer = true
seed = 11

[[meters]]
id = "house-2"
bus = "line-1"
unit_id = 7
profile = "sunspec203"
region = "north"
"""


def test_quick_start_numbers_meters_and_fills_buses_on_consecutive_ports() -> None:
    config = quick_config(500, 5020, profile="mixed", seed=3)
    assert [b.port for b in config.buses] == [5020, 5021, 5022]
    assert [b.id for b in config.buses] == ["bus-1", "bus-2", "bus-3"]
    first, last = config.meters[0], config.meters[-1]
    assert (first.id, first.bus, first.unit_id, first.profile) == (
        "MTR-00000001",
        "bus-1",
        1,
        "sdm630",
    )
    assert config.meters[246].unit_id == 247
    assert (config.meters[247].bus, config.meters[247].unit_id) == ("bus-2", 1)
    assert (last.id, last.bus, last.unit_id) == ("MTR-00000500", "bus-3", 6)
    assert [m.profile for m in config.meters[:4]] == ["sdm630", "sdm120", "sunspec203", "sdm630"]
    assert {m.region for m in config.meters} == {"region-1", "region-2", "region-3"}
    share = sum(m.prosumer for m in config.meters) / 500
    assert 0.2 < share < 0.4
    assert quick_config(500, 5020, profile="mixed", seed=3) == config
    assert config.control == ControlConfig(port=3010)


def test_quick_start_spreads_meters_by_per_bus() -> None:
    config = quick_config(1000, 6000, per_bus=200)
    assert [b.port for b in config.buses] == [6000, 6001, 6002, 6003, 6004]
    assert {m.unit_id for m in config.meters} == set(range(1, 201))


def test_the_toml_form_builds_the_same_kind_of_object(tmp_path: Path) -> None:
    path = tmp_path / "sim.toml"
    path.write_text(EXAMPLE)
    config = load_config(path)
    assert config.seed == 42
    assert config.update_interval == 0.5
    assert config.state_file == tmp_path / "state" / "counters.json"
    assert config.control == ControlConfig(port=3011)
    assert config.regions == (RegionConfig("north", "Europe/Berlin", -2.0),)
    assert config.buses[1] == BusConfig(
        "line-1", transport="rtu", device="/dev/ttyUSB0", baudrate=19200, parity="E"
    )
    assert config.meters[0] == MeterConfig(
        "house-1", bus="gw-a", unit_id=1, profile="sdm630", region="north", prosumer=True, seed=11
    )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("unit_id = 7", "unit_id = 248"), r"meters\[1\]\.unit_id: must be 1\.\.247, got 248"),
        (('bus = "line-1"', 'bus = "gw-b"'), r"meters\[1\]\.bus: no bus has the id 'gw-b'"),
        (('profile = "sunspec203"', 'profile = "abb"'), r"meters\[1\]\.profile: .*'abb'"),
        (('"Europe/Berlin"', '"Mars/Olympus"'), r"regions\[0\]\.timezone: unknown IANA"),
        (('device = "/dev/ttyUSB0"', ""), r"buses\[1\]\.device: an rtu bus needs"),
        (('parity = "E"', 'parity = "X"'), r"buses\[1\]\.parity"),
        (("seed = 11", "seed = 11\ncolour = 1"), r"meters\[0\]: unknown key\(s\) colour"),
        (("update_interval = 0.5", "update_interval = 0"), r"update_interval: must be"),
        (('id = "house-2"', 'id = "house-1"'), r"meters\[1\]\.id: duplicate id 'house-1'"),
        (("unit_id = 7", "unit_id = 1\nprosumer = 3"), r"meters\[1\]\.prosumer: must be true"),
        (('id = "house-2"', 'id = "house 2"'), r"meters\[1\]\.id: .*forbidden character"),
        (("[control]\nport = 3011", "[control]\nport = 3011\nhost = 5"), r"control\.host"),
        (('unit_id = 1\nprofile = "sdm630"', 'profile = "sdm630"'), r"meters\[0\]: missing key"),
    ],
)
def test_validation_errors_name_the_key(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    old, new = edit
    assert old in EXAMPLE
    path = tmp_path / "sim.toml"
    path.write_text(EXAMPLE.replace(old, new, 1))
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_two_meters_cannot_share_a_unit_id_on_a_bus_nor_two_buses_a_port() -> None:
    region = (RegionConfig("r"),)
    with pytest.raises(ConfigError, match=r"meters\[1\]\.unit_id: unit id 1 on bus 'b'"):
        SimConfig(
            regions=region,
            buses=(BusConfig("b", port=5020),),
            meters=(
                MeterConfig("m1", "b", 1, "sdm120", "r"),
                MeterConfig("m2", "b", 1, "sdm120", "r"),
            ),
        )
    with pytest.raises(ConfigError, match=r"buses\[1\]\.port: 127\.0\.0\.1:5020 is already used"):
        SimConfig(
            regions=region,
            buses=(BusConfig("a", port=5020), BusConfig("b", port=5020)),
            meters=(MeterConfig("m1", "b", 1, "sdm120", "r"),),
        )


def test_unknown_top_level_keys_and_bad_quick_start_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown top-level key"):
        parse_config({"meterz": []})
    with pytest.raises(ConfigError, match="profile: must be one of"):
        quick_config(3, 5020, profile="sdm999")
    with pytest.raises(ConfigError, match=r"per_bus: must be 1\.\.247"):
        quick_config(3, 5020, per_bus=300)
    with pytest.raises(ConfigError, match=r"5 buses from port 65534 run past 65535"):
        quick_config(1000, 65534)
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("seed = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
