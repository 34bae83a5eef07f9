"""Register images against the protocol's own decoder, without the wire."""

from __future__ import annotations

import math

import numpy as np
import pytest
from testkit import START

from segs.protocol.profiles import SUNSPEC_MARKER, Profile, load_profile, parse_profile
from segs.sim.physics import Fleet, MeterSpec, RegionSpec
from segs.sim.registers import ImageMeter, ProfileImage, Readings, Span, readings, served_spans


def _image(profile: Profile, n: int = 4) -> tuple[Fleet, Readings, ProfileImage]:
    fleet = Fleet(
        [MeterSpec(profile.phases, 0, i % 2 == 0, seed=i) for i in range(n)],
        [RegionSpec()],
        seed=3,
    )
    fleet.step(START, 0.0)
    values = readings(fleet)
    meters = [
        ImageMeter(i, unit_id=i + 1, meter_id=f"MTR-{i + 1:08d}", firmware="9.9") for i in range(n)
    ]
    image = ProfileImage(profile, meters, values.names)
    image.update(values)
    return fleet, values, image


def _decode(image: ProfileImage, row: int, *, missing: bool = False) -> dict[str, object]:
    profile = image.profile
    reads = [
        image.words(row, b.function_code, b.address, b.count, missing=missing)
        for b in profile.blocks
    ]
    return profile.decode(reads)


def test_served_spans_join_the_read_plan_within_max_gap() -> None:
    assert served_spans(load_profile("sdm630")) == (
        Span(4, 0, 80),
        Span(4, 200, 226),
        Span(4, 342, 346),
    )
    assert served_spans(load_profile("sdm120")) == (Span(4, 0, 80), Span(4, 342, 346))
    assert served_spans(load_profile("sunspec203")) == (Span(3, 40000, 40179),)


@pytest.mark.parametrize("name", ["sdm630", "sdm120"])
def test_eastron_images_decode_to_the_readings_at_float32_precision(name: str) -> None:
    profile = load_profile(name)
    _, values, image = _image(profile)
    for row in range(4):
        decoded = _decode(image, row)
        truth = values.meter(row)
        for reg in profile.registers:
            expected = truth[reg.name]
            assert decoded[reg.name] == pytest.approx(expected, rel=1e-6, abs=1e-6), reg.name


def test_sunspec_image_decodes_with_its_scale_factors() -> None:
    profile = load_profile("sunspec203")
    _, values, image = _image(profile)
    resolution = {"V": 0.1, "A": 0.01, "Hz": 0.01, "kW": 0.001, "kVA": 0.001, "kvar": 0.001, "": 1}
    for row in range(4):
        decoded = _decode(image, row)
        truth = values.meter(row)
        assert decoded["sunspec_id"] == "SunS"
        assert decoded["manufacturer"] == "SEGS"
        assert decoded["device_model"] == "sim-sunspec203"
        assert decoded["serial_number"] == f"MTR-{row + 1:08d}"
        assert decoded["device_address"] == row + 1
        assert image.words(row, 3, 40177, 2) == [0xFFFF, 0]  # the end of the model chain
        for reg in profile.registers:
            if reg.name not in truth:
                continue
            if reg.type.value == "acc32":
                # Counters are floored to whole Wh: never ahead of the energy used.
                assert truth[reg.name] - 0.001 <= decoded[reg.name] <= truth[reg.name], reg.name
            elif reg.name.startswith("power_factor"):
                assert decoded[reg.name] == pytest.approx(truth[reg.name], abs=0.0005), reg.name
            else:
                step = resolution[reg.unit]
                assert decoded[reg.name] == pytest.approx(truth[reg.name], abs=step / 2 + 1e-9), (
                    reg.name
                )
    marker = image.words(0, 3, 40000, 2)
    assert tuple(marker) == SUNSPEC_MARKER


def test_the_missing_image_reads_as_not_implemented() -> None:
    for name in ("sdm630", "sunspec203"):
        profile = load_profile(name)
        _, _, image = _image(profile)
        decoded = _decode(image, 0, missing=True)
        assert decoded["voltage_l1"] is None
        assert decoded["power_l1"] is None
        if name == "sunspec203":
            assert decoded["sunspec_id"] == "SunS"  # the map itself stays readable


def test_integers_are_clamped_short_of_the_not_implemented_marker() -> None:
    profile = load_profile("sunspec203")
    fleet, values, image = _image(profile, n=1)
    matrix = values.matrix.copy()
    matrix[values.index["power_total"]] = 1e6  # 1 GW: far beyond int16 W
    matrix[values.index["power_l1"]] = -1e6
    image.update(Readings(values.names, matrix, values.index, fleet.phases))
    decoded = _decode(image, 0)
    assert decoded["power_total"] == pytest.approx(32.767)
    assert decoded["power_l1"] == pytest.approx(-32.767)


def test_a_little_endian_profile_is_served_word_swapped() -> None:
    data = {
        "id": "swapped",
        "manufacturer": "Test",
        "model": "T1",
        "description": "word-swapped float meter",
        "reference": "test",
        "phases": 1,
        "function_code": 4,
        "word_order": "little",
        "registers": [
            {"name": "voltage_l1", "address": 0, "type": "float32", "unit": "V"},
            {"name": "import_energy", "address": 2, "type": "uint32", "unit": "kWh", "scale": 0.01},
            {"name": "mystery", "address": 4, "type": "float32", "unit": ""},
        ],
    }
    profile = parse_profile(data, source="test")
    _, values, image = _image(profile, n=2)
    decoded = _decode(image, 1)
    truth = values.meter(1)
    assert decoded["voltage_l1"] == pytest.approx(truth["voltage_l1"], rel=1e-6)
    assert decoded["import_energy"] == pytest.approx(truth["import_energy"], abs=0.006)
    assert decoded["mystery"] is None  # a register the simulator knows nothing about
    high, low = image.words(1, 4, 0, 2)
    assert not math.isnan(np.array([low, high], dtype=">u2").view(">f4")[0])
