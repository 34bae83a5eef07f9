"""Device profiles: shipped register maps, validation, read plans, decoding, SunSpec discovery."""

from __future__ import annotations

import ast
import copy
import re
from collections.abc import Callable, Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segs.protocol.errors import ProfileError
from segs.protocol.profiles import (
    CANONICAL_UNITS,
    MAX_READ_REGISTERS,
    Block,
    Profile,
    Register,
    SunSpecError,
    load_profile,
    parse_profile,
    plan_blocks,
    relocate_sunspec,
    shipped_profiles,
    sunspec_models,
)
from segs.protocol.registers import (
    RegisterType,
    WordOrder,
    encode_raw,
    encode_register,
    register_count,
)

PROTOCOL = Path(__file__).resolve().parents[2] / "protocol"


def test_shipped_profiles() -> None:
    assert shipped_profiles() == ("sdm120", "sdm630", "sunspec203")
    for name in shipped_profiles():
        profile = load_profile(name)
        assert profile.id == name
        assert profile.registers == tuple(
            sorted(profile.registers, key=lambda r: (r.function_code, r.address))
        )


# --- the published maps ------------------------------------------------------------------------


def assert_register(
    profile: Profile, name: str, address: int, unit: str, *, fc: int, type_: RegisterType
) -> Register:
    register = profile.register(name)
    assert (register.address, register.unit, register.function_code, register.type) == (
        address,
        unit,
        fc,
        type_,
    )
    return register


@pytest.mark.parametrize(
    ("name", "address", "unit"),
    [
        ("voltage_l1", 0, "V"),
        ("voltage_l2", 2, "V"),
        ("voltage_l3", 4, "V"),
        ("current_l1", 6, "A"),
        ("current_l3", 10, "A"),
        ("power_l1", 12, "kW"),
        ("power_l3", 16, "kW"),
        ("apparent_power_l1", 18, "kVA"),
        ("reactive_power_l1", 24, "kvar"),
        ("power_factor_l1", 30, ""),
        ("power_factor_l3", 34, ""),
        ("voltage_ln_average", 42, "V"),
        ("current_sum", 48, "A"),
        ("power_total", 52, "kW"),
        ("apparent_power_total", 56, "kVA"),
        ("reactive_power_total", 60, "kvar"),
        ("power_factor_total", 62, ""),
        ("frequency", 70, "Hz"),
        ("import_energy", 72, "kWh"),
        ("export_energy", 74, "kWh"),
        ("import_reactive_energy", 76, "kvarh"),
        ("export_reactive_energy", 78, "kvarh"),
        ("voltage_l1_l2", 200, "V"),
        ("voltage_l2_l3", 202, "V"),
        ("voltage_l3_l1", 204, "V"),
        ("current_neutral", 224, "A"),
        ("total_energy", 342, "kWh"),
        ("total_reactive_energy", 344, "kvarh"),
    ],
)
def test_sdm630_map(name: str, address: int, unit: str) -> None:
    register = assert_register(
        load_profile("sdm630"), name, address, unit, fc=4, type_=RegisterType.FLOAT32
    )
    assert register.word_order is WordOrder.BIG
    assert register.count == 2
    assert register.scale == (0.001 if unit in {"kW", "kVA", "kvar"} else 1.0)
    assert f"({address + 30001})" in register.description


@pytest.mark.parametrize(
    ("name", "address", "unit"),
    [
        ("voltage_l1", 0, "V"),
        ("current_l1", 6, "A"),
        ("power_l1", 12, "kW"),
        ("apparent_power_l1", 18, "kVA"),
        ("reactive_power_l1", 24, "kvar"),
        ("power_factor_l1", 30, ""),
        ("phase_angle_l1", 36, "deg"),
        ("frequency", 70, "Hz"),
        ("import_energy", 72, "kWh"),
        ("export_energy", 74, "kWh"),
        ("import_reactive_energy", 76, "kvarh"),
        ("export_reactive_energy", 78, "kvarh"),
        ("total_energy", 342, "kWh"),
        ("total_reactive_energy", 344, "kvarh"),
    ],
)
def test_sdm120_map(name: str, address: int, unit: str) -> None:
    register = assert_register(
        load_profile("sdm120"), name, address, unit, fc=4, type_=RegisterType.FLOAT32
    )
    assert f"({address + 30001})" in register.description


def test_sdm120_is_single_phase_without_totals() -> None:
    profile = load_profile("sdm120")
    assert profile.phases == 1
    assert not profile.has_register("power_total")
    assert not any(re.search(r"_l[23]$", r.name) for r in profile.registers)


def test_sunspec_map() -> None:
    profile = load_profile("sunspec203")
    h = RegisterType
    assert_register(profile, "sunspec_id", 40000, "", fc=3, type_=h.STRING)
    assert profile.register("sunspec_id").value == "SunS"
    assert profile.register("sunspec_id").count == 2
    assert profile.register("common_id").address == 40002
    assert profile.register("common_id").value == 1
    assert profile.register("common_length").value == 66
    assert profile.register("manufacturer").address == 40004
    assert profile.register("manufacturer").count == 16
    assert profile.register("serial_number").address == 40052
    assert profile.register("meter_model_id").address == 40070
    assert profile.register("meter_model_id").value == 203
    assert profile.register("meter_model_length").value == 105
    assert_register(profile, "current_l1", 40073, "A", fc=3, type_=h.INT16)
    assert_register(profile, "a_sf", 40076, "", fc=3, type_=h.SUNSSF)
    power = assert_register(profile, "power_total", 40088, "kW", fc=3, type_=h.INT16)
    assert (power.scale, power.scale_factor) == (0.001, "w_sf")
    assert_register(profile, "w_sf", 40092, "", fc=3, type_=h.SUNSSF)
    assert profile.register("power_factor_total").scale == 0.01
    assert_register(profile, "export_energy", 40108, "kWh", fc=3, type_=h.ACC32)
    imported = assert_register(profile, "import_energy", 40116, "kWh", fc=3, type_=h.ACC32)
    assert (imported.scale, imported.scale_factor) == (0.001, "tot_wh_sf")
    assert_register(profile, "events", 40175, "", fc=3, type_=h.UINT32)
    assert_register(profile, "end_id", 40177, "", fc=3, type_=h.UINT16)
    assert profile.register("end_id").value == 0xFFFF
    assert profile.register("end_length").value == 0
    # Model 203 is exactly its declared 105 registers long.
    model_203 = [r for r in profile.registers if r.model == 203]
    assert sum(r.count for r in model_203) == 2 + 105
    assert all(r.address == 40070 + r.offset for r in model_203 if r.offset is not None)
    scale_factors = {r.name: r.value for r in profile.registers if r.type is h.SUNSSF}
    assert scale_factors["a_sf"] == -2
    assert scale_factors["v_sf"] == -1
    assert scale_factors["hz_sf"] == -2
    assert scale_factors["w_sf"] == 0
    assert scale_factors["pf_sf"] == -1
    assert scale_factors["tot_wh_sf"] == 0


def test_shipped_profiles_use_canonical_units() -> None:
    for name in shipped_profiles():
        for register in load_profile(name).registers:
            if register.name in CANONICAL_UNITS:
                assert register.unit == CANONICAL_UNITS[register.name]


# --- read plans --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "plan"),
    [
        ("sdm630", [(4, 0, 80), (4, 200, 26), (4, 342, 4)]),
        ("sdm120", [(4, 0, 80), (4, 342, 4)]),
        ("sunspec203", [(3, 40000, 125), (3, 40125, 54)]),
    ],
)
def test_shipped_plans(name: str, plan: list[tuple[int, int, int]]) -> None:
    profile = load_profile(name)
    assert [(b.function_code, b.address, b.count) for b in profile.blocks] == plan
    assert_valid_plan(list(profile.registers), profile.blocks, profile.max_block, profile.max_gap)
    assert all(b.count <= MAX_READ_REGISTERS for b in profile.blocks)


def test_sunspec_scale_factors_share_a_read_with_their_registers() -> None:
    profile = load_profile("sunspec203")
    for register in profile.registers:
        if register.scale_factor is not None:
            assert profile.block_of(register.scale_factor) == profile.block_of(register.name)


def assert_valid_plan(
    registers: Sequence[Register], blocks: Sequence[Block], max_block: int, max_gap: int
) -> None:
    covered = [r for b in blocks for r in b.registers]
    assert sorted(covered, key=id) == sorted(registers, key=id)
    assert len({id(r) for r in covered}) == len(covered)
    for block in blocks:
        assert 1 <= block.count <= max_block
        assert block.registers
        assert all(r.function_code == block.function_code for r in block.registers)
        assert all(
            block.address <= r.address and r.address + r.count <= block.address + block.count
            for r in block.registers
        )
        assert block.address == min(r.address for r in block.registers)
        assert block.address + block.count == max(r.address + r.count for r in block.registers)
    for first, second in pairwise(blocks):
        assert (first.function_code, first.address) < (second.function_code, second.address)
        if first.function_code == second.function_code:
            end = first.address + first.count
            assert end <= second.address
            # Greedy: the next block's first register could not have joined this block.
            head = second.registers[0]
            assert (
                head.address - end > max_gap
                or head.address + head.count - first.address > max_block
            )


@st.composite
def register_sets(draw: st.DrawFn) -> list[Register]:
    registers: list[Register] = []
    for fc in draw(st.sets(st.sampled_from([3, 4]), min_size=1)):
        address = draw(st.integers(0, 1000))
        for index in range(draw(st.integers(1, 40))):
            type_ = draw(st.sampled_from(list(RegisterType)))
            length = draw(st.integers(1, 10)) if type_ is RegisterType.STRING else None
            count = register_count(type_, length)
            registers.append(
                Register(f"r{fc}_{index}", fc, address, type_, count, WordOrder.BIG, "")
            )
            address += count + draw(st.integers(0, 60))
    return draw(st.permutations(registers))


@given(register_sets(), st.integers(10, MAX_READ_REGISTERS), st.integers(0, 50))
def test_plan_properties(registers: list[Register], max_block: int, max_gap: int) -> None:
    blocks = plan_blocks(registers, max_block=max_block, max_gap=max_gap)
    assert_valid_plan(registers, blocks, max_block, max_gap)


def test_plan_limits() -> None:
    register = Register("s", 3, 0, RegisterType.STRING, 20, WordOrder.BIG, "")
    with pytest.raises(ProfileError, match=r"'s'.*max_block 10"):
        plan_blocks([register], max_block=10)
    for bad in (0, 126):
        with pytest.raises(ProfileError, match="max_block"):
            plan_blocks([register], max_block=bad)
    with pytest.raises(ProfileError, match="max_gap"):
        plan_blocks([register], max_gap=-1)


# --- decoding ----------------------------------------------------------------------------------


def register_image(profile: Profile, values: Mapping[str, float | str | None]) -> dict[int, int]:
    """Serve ``values`` (physical) and the profile's constants the way the simulator does."""
    factors = {
        r.name: r.value
        for r in profile.registers
        if r.type is RegisterType.SUNSSF and isinstance(r.value, int)
    }
    image: dict[int, int] = {}
    for register in profile.registers:
        if register.name in values:
            sf = factors[register.scale_factor] if register.scale_factor else None
            regs = encode_register(register, values[register.name], sf)
        elif register.value is not None:
            regs = encode_raw(
                register.value,
                register.type,
                register.word_order,
                length=(register.count if register.type is RegisterType.STRING else None),
            )
        else:
            continue
        for i, reg in enumerate(regs):
            image[register.address + i] = reg
    return image


def reader(image: dict[int, int]) -> Callable[[int, int], list[int]]:
    return lambda address, count: [image.get(address + i, 0) for i in range(count)]


def poll(profile: Profile, image: dict[int, int]) -> dict[str, float | int | str | None]:
    read = reader(image)
    return profile.decode([read(b.address, b.count) for b in profile.blocks])


def test_decode_sdm630_poll() -> None:
    profile = load_profile("sdm630")
    served = {"voltage_l1": 230.0, "power_total": -3.5, "import_energy": 1234.5, "frequency": 50.0}
    values = poll(profile, register_image(profile, served))
    assert set(values) == {r.name for r in profile.registers}
    assert values["voltage_l1"] == 230.0
    assert values["power_total"] == pytest.approx(-3.5)
    assert values["import_energy"] == 1234.5
    assert values["frequency"] == 50.0
    assert values["current_l1"] == 0.0  # unserved registers read as zero floats


def test_decode_sunspec_poll() -> None:
    profile = load_profile("sunspec203")
    served: dict[str, float | str | None] = {
        "manufacturer": "Acme",
        "serial_number": "SN-0001",
        "current_l1": 12.34,
        "voltage_l1": 231.5,
        "frequency": 49.98,
        "power_total": 5.123,
        "power_factor_total": 0.98,
        "import_energy": 12345.678,
        "export_energy": 0.0,
    }
    values = poll(profile, register_image(profile, served))
    assert values["sunspec_id"] == "SunS"
    assert values["meter_model_id"] == 203
    assert values["manufacturer"] == "Acme"
    assert values["serial_number"] == "SN-0001"
    assert values["current_l1"] == 12.34
    assert values["voltage_l1"] == 231.5
    assert values["frequency"] == 49.98
    assert values["power_total"] == 5.123
    assert values["power_factor_total"] == 0.98
    assert values["import_energy"] == 12345.678
    assert values["export_energy"] == 0.0
    assert values["a_sf"] == -2
    assert values["end_id"] is None  # 0xFFFF is also uint16's "not implemented"


def test_decode_block_with_scale_factor_in_another_block() -> None:
    data = minimal_profile()
    data["max_gap"] = 0
    data["registers"] = [
        {
            "name": "power_total",
            "address": 0,
            "type": "int16",
            "unit": "kW",
            "scale_factor": "w_sf",
        },
        {"name": "w_sf", "address": 10, "type": "sunssf", "unit": ""},
    ]
    profile = parse_profile(data, source="test.toml")
    power = profile.blocks[0]
    with pytest.raises(ProfileError, match=r"'test'.*'power_total'.*scale_factors"):
        profile.decode_block(power, [1234])
    assert profile.decode_block(power, [1234], {"w_sf": -3}) == {"power_total": 1.234}
    assert profile.decode_block(power, [1234], {"w_sf": None}) == {"power_total": None}
    assert profile.decode([[1234], encode_raw(-2, RegisterType.SUNSSF)]) == {
        "power_total": 12.34,
        "w_sf": -2,
    }
    # A failed read makes its registers, and the registers they scale, missing.
    assert profile.decode([[1234], None]) == {"power_total": None, "w_sf": None}
    assert profile.decode([None, [0xFFFE]]) == {"power_total": None, "w_sf": -2}


def test_decode_block_checks_the_read_length() -> None:
    profile = load_profile("sdm120")
    with pytest.raises(ValueError, match="80 registers, got 2"):
        profile.decode_block(profile.blocks[0], [0, 0])


def test_unknown_register_names_the_profile() -> None:
    profile = load_profile("sdm630")
    with pytest.raises(ProfileError, match=r"'sdm630'.*'power'"):
        profile.register("power")
    with pytest.raises(ProfileError, match=r"'sdm630'.*'power'"):
        profile.block_of("power")
    assert profile.block_of("power_total").address == 0


# --- SunSpec discovery -------------------------------------------------------------------------


def test_sunspec_models_walks_the_chain() -> None:
    profile = load_profile("sunspec203")
    image = register_image(profile, {})
    assert sunspec_models(reader(image)) == [(1, 40002, 66), (203, 40070, 105)]


def test_sunspec_models_without_marker() -> None:
    with pytest.raises(SunSpecError, match="SunS"):
        sunspec_models(reader({}))


def test_relocate_for_a_device_with_an_extra_model() -> None:
    profile = load_profile("sunspec203")
    standard = register_image(profile, {"power_total": 1.5})
    # Insert a 10-register model 120 between model 1 and model 203.
    extra = {40070: 120, 40071: 10}
    device = {a: v for a, v in standard.items() if a < 40070}
    device |= extra | {a + 12: v for a, v in standard.items() if a >= 40070}
    models = sunspec_models(reader(device))
    assert models == [(1, 40002, 66), (120, 40070, 10), (203, 40082, 105)]
    moved = relocate_sunspec(profile, models)
    assert moved.register("power_total").address == 40088 + 12
    assert moved.register("end_id").address == 40177 + 12
    assert moved.register("sunspec_id").address == 40000
    values = poll(moved, device)
    assert values["power_total"] == 1.5
    assert values["meter_model_id"] == 203


def test_relocate_without_the_model() -> None:
    profile = load_profile("sunspec203")
    with pytest.raises(ProfileError, match=r"'sunspec203'.*'meter_model_id'.*model 203"):
        relocate_sunspec(profile, [(1, 40002, 66)])
    with pytest.raises(ProfileError, match=r"'sunspec203'.*too short"):
        relocate_sunspec(profile, [(1, 40002, 66), (203, 40070, 50)])


# --- validation --------------------------------------------------------------------------------


def minimal_profile() -> dict[str, Any]:
    return {
        "id": "test",
        "manufacturer": "Acme",
        "model": "M1",
        "description": "a test meter",
        "reference": "none",
        "phases": 3,
        "function_code": 4,
        "max_gap": 4,
        "registers": [
            {"name": "voltage_l1", "address": 0, "type": "float32", "unit": "V"},
            {"name": "power_total", "address": 2, "type": "float32", "unit": "kW", "scale": 0.001},
            {"name": "serial", "address": 10, "type": "string", "length": 4, "unit": ""},
            {"name": "pf_sf", "address": 20, "type": "sunssf", "unit": "", "value": -1},
            {
                "name": "power_factor_total",
                "address": 21,
                "type": "int16",
                "unit": "",
                "scale": 0.01,
                "scale_factor": "pf_sf",
            },
        ],
    }


def test_minimal_profile_is_valid() -> None:
    profile = parse_profile(minimal_profile(), source="test.toml")
    assert [(b.address, b.count) for b in profile.blocks] == [(0, 4), (10, 4), (20, 2)]
    assert profile.register("power_total").scale == 0.001
    assert profile.register("voltage_l1").word_order is WordOrder.BIG


def set_top(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        data[key] = value

    return mutate


def drop_top(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda data: data.pop(key)


def set_reg(index: int, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        data["registers"][index][key] = value

    return mutate


def drop_reg(index: int, key: str) -> Callable[[dict[str, Any]], None]:
    return lambda data: data["registers"][index].pop(key)


def add_reg(**register: Any) -> Callable[[dict[str, Any]], None]:
    return lambda data: data["registers"].append(register)


PROFILE_ERRORS = [
    ("unknown top-level key", set_top("colour", "red"), "unknown key.*colour"),
    ("missing top-level key", drop_top("manufacturer"), "missing key.*manufacturer"),
    ("bad top-level type", set_top("model", 5), "model must be a string"),
    ("phases 2", set_top("phases", 2), "phases must be 1 or 3"),
    ("max_block too big", set_top("max_block", 126), "max_block must be 1..125"),
    ("max_block zero", set_top("max_block", 0), "max_block must be 1..125"),
    ("negative max_gap", set_top("max_gap", -1), "max_gap"),
    ("bad default function code", set_top("function_code", 6), "function_code must be 3"),
    ("bad default word order", set_top("word_order", "middle"), "word_order must be"),
    ("no registers", set_top("registers", []), "registers must be a non-empty"),
]


@pytest.mark.parametrize(
    ("mutate", "match"),
    [pytest.param(m, match, id=case) for case, m, match in PROFILE_ERRORS],
)
def test_profile_level_errors_name_the_profile(
    mutate: Callable[[dict[str, Any]], None], match: str
) -> None:
    data = minimal_profile()
    mutate(data)
    with pytest.raises(ProfileError, match=match) as info:
        parse_profile(data, source="test.toml")
    assert "profile 'test' (test.toml)" in str(info.value)


REGISTER_ERRORS = [
    ("unknown key", "voltage_l1", set_reg(0, "colour", "red"), "unknown key.*colour"),
    ("missing key", "voltage_l1", drop_reg(0, "unit"), "missing key.*unit"),
    ("address type", "voltage_l1", set_reg(0, "address", "0"), "address must be an integer"),
    ("scale type", "power_total", set_reg(1, "scale", "milli"), "scale must be a finite number"),
    ("zero scale", "power_total", set_reg(1, "scale", 0), "scale must not be 0"),
    ("bad type", "voltage_l1", set_reg(0, "type", "float16"), "type must be one of"),
    ("unit type", "voltage_l1", set_reg(0, "unit", None), "unit must be a string"),
    ("bad function code", "voltage_l1", set_reg(0, "function_code", 16), "function_code must"),
    ("bad word order", "voltage_l1", set_reg(0, "word_order", "swapped"), "word_order must"),
    ("address too high", "voltage_l1", set_reg(0, "address", 65536), "address must be 0..65535"),
    ("negative address", "voltage_l1", set_reg(0, "address", -1), "address must be 0..65535"),
    ("runs past 65535", "voltage_l1", set_reg(0, "address", 65535), "runs past 65535"),
    ("overlap", "power_total", set_reg(1, "address", 1), "overlaps register 'voltage_l1'"),
    (
        "overlap inside a string",
        "frequency",
        add_reg(name="frequency", address=12, type="float32", unit="Hz"),
        "overlaps register 'serial'",
    ),
    (
        "duplicate name",
        "voltage_l1",
        add_reg(name="voltage_l1", address=30, type="float32", unit="V"),
        "duplicate name",
    ),
    ("count mismatch", "voltage_l1", set_reg(0, "count", 1), "count 1 does not match float32"),
    ("string without length", "serial", drop_reg(2, "length"), "needs a length"),
    ("length on a number", "voltage_l1", set_reg(0, "length", 2), "length applies to strings"),
    (
        "missing scale factor register",
        "power_factor_total",
        set_reg(4, "scale_factor", "pf_scale"),
        "scale_factor 'pf_scale' is not a register",
    ),
    (
        "scale factor not sunssf",
        "power_factor_total",
        set_reg(4, "scale_factor", "voltage_l1"),
        "'voltage_l1' is float32, not sunssf",
    ),
    ("scaled sunssf", "pf_sf", set_reg(3, "scale", 0.1), "cannot be scaled"),
    ("canonical unit", "power_total", set_reg(1, "unit", "W"), "unit must be 'kW'"),
    (
        "phase beyond the profile",
        "voltage_l3",
        lambda data: (
            data.update(phases=1),
            add_reg(name="voltage_l3", address=30, type="float32", unit="V")(data),
        ),
        "1 phase",
    ),
    ("value does not fit", "pf_sf", set_reg(3, "value", 20), "value 20 does not fit"),
    ("value wrong type", "pf_sf", set_reg(3, "value", 1.5), "value must be an integer or a string"),
    ("not snake_case", "Voltage", set_reg(0, "name", "Voltage"), "snake_case"),
    (
        "no function code anywhere",
        "voltage_l1",
        lambda data: data.pop("function_code"),
        "no function_code",
    ),
    ("model without offset", "voltage_l1", set_reg(0, "model", 1), "model and offset"),
]


@pytest.mark.parametrize(
    ("register", "mutate", "match"),
    [pytest.param(r, m, match, id=case) for case, r, m, match in REGISTER_ERRORS],
)
def test_register_errors_name_the_profile_and_the_register(
    register: str, mutate: Callable[[dict[str, Any]], None], match: str
) -> None:
    data = minimal_profile()
    mutate(data)
    with pytest.raises(ProfileError, match=match) as info:
        parse_profile(data, source="test.toml")
    assert "profile 'test' (test.toml)" in str(info.value)
    assert f"register {register!r}" in str(info.value)


def test_register_without_a_name_is_named_by_position() -> None:
    data = minimal_profile()
    data["registers"][1]["name"] = 7
    with pytest.raises(ProfileError, match=r"profile 'test' \(test\.toml\), register #2: name"):
        parse_profile(data, source="test.toml")


def test_bad_id_names_the_source() -> None:
    data = minimal_profile()
    data["id"] = "has space"
    with pytest.raises(ProfileError, match=r"profile from test\.toml: id"):
        parse_profile(data, source="test.toml")


def sunspec_data() -> dict[str, Any]:
    data = minimal_profile()
    data["function_code"] = 3
    data["registers"] = [
        {
            "name": "model_id",
            "address": 100,
            "type": "uint16",
            "unit": "",
            "value": 203,
            "model": 203,
            "offset": 0,
        },
        {
            "name": "model_length",
            "address": 101,
            "type": "uint16",
            "unit": "",
            "value": 4,
            "model": 203,
            "offset": 1,
        },
        {
            "name": "power_total",
            "address": 102,
            "type": "int16",
            "unit": "kW",
            "scale_factor": "w_sf",
            "model": 203,
            "offset": 2,
        },
        {"name": "w_sf", "address": 105, "type": "sunssf", "unit": "", "model": 203, "offset": 5},
    ]
    return data


@pytest.mark.parametrize(
    ("mutate", "register", "match"),
    [
        (set_reg(2, "address", 103), "power_total", "not model 203's ID address 100 \\+ offset 2"),
        (set_reg(3, "offset", 6), "w_sf", "not model 203's ID address"),
        (set_reg(1, "value", 3), "w_sf", "runs past model 203's length 3"),
        (set_reg(0, "value", 1), "model_id", "model 203 needs an ID register"),
        (drop_reg(1, "value"), "model_id", "model 203 needs a length register"),
    ],
)
def test_sunspec_layout_errors(
    mutate: Callable[[dict[str, Any]], None], register: str, match: str
) -> None:
    parse_profile(sunspec_data(), source="test.toml")
    data = sunspec_data()
    mutate(data)
    with pytest.raises(ProfileError, match=match) as info:
        parse_profile(data, source="test.toml")
    assert "profile 'test'" in str(info.value)
    assert f"register {register!r}" in str(info.value)


def test_profile_data_is_not_mutated() -> None:
    data = minimal_profile()
    snapshot = copy.deepcopy(data)
    parse_profile(data, source="test.toml")
    assert data == snapshot


# --- loading from files ------------------------------------------------------------------------

CUSTOM_TOML = """
id = "acme-m1"
manufacturer = "Acme"
model = "M1"
description = "a custom meter"
reference = "Acme M1 manual, holding registers, address = register - 40001"
phases = 1
function_code = 3
word_order = "little"
max_gap = 2
max_block = 16

[[registers]]
name = "voltage_l1"
address = 0
type = "uint16"
unit = "V"
scale = 0.1
description = "Voltage (40001)"

[[registers]]
name = "import_energy"
address = 2
type = "uint32"
unit = "kWh"
scale = 0.01
description = "Imported energy (40003)"
"""


@pytest.mark.parametrize("as_str", [False, True])
def test_load_profile_from_a_path(tmp_path: Path, as_str: bool) -> None:
    path = tmp_path / "acme.toml"
    path.write_text(CUSTOM_TOML, encoding="utf-8")
    profile = load_profile(str(path) if as_str else path)
    assert profile.id == "acme-m1"
    assert profile.register("import_energy").word_order is WordOrder.LITTLE
    assert [(b.function_code, b.address, b.count) for b in profile.blocks] == [(3, 0, 4)]
    values = profile.decode([[2301, 0, 0x5678, 0x1234]])
    assert values == {"voltage_l1": 230.1, "import_energy": 0x12345678 / 100}


def test_load_profile_errors(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="neither a shipped profile"):
        load_profile("sdm999")
    broken = tmp_path / "broken.toml"
    broken.write_text("id = ", encoding="utf-8")
    with pytest.raises(ProfileError, match=r"broken.toml: not valid TOML"):
        load_profile(broken)
    wrong_unit = tmp_path / "wrong.toml"
    wrong_unit.write_text(CUSTOM_TOML.replace('unit = "kWh"', 'unit = "Wh"'), encoding="utf-8")
    with pytest.raises(ProfileError, match=r"'acme-m1'.*wrong.toml.*'import_energy'.*'kWh'"):
        load_profile(wrong_unit)


# --- packaging rules ---------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["registers.py", "profiles.py"])
def test_no_modbus_or_numpy_import(module: str) -> None:
    tree = ast.parse((PROTOCOL / module).read_text(encoding="utf-8"))
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {name.split(".")[0] for name in imported} & {"pymodbus", "numpy"}
