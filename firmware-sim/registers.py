"""Register images: what each meter answers on the wire, derived from its device profile.

:func:`readings` turns the fleet's state into every quantity a register can serve,
named like the profile registers (``voltage_l1``, ``power_total``, ``import_energy``,
...), in the units of the profiles. A :class:`ProfileImage` holds the registers of
all meters of one profile as a ``uint16`` matrix (one row per meter) and rebuilds
it from the readings in a few vectorised operations per update: float32 values via
``astype('>f4').view('>u2')``, SunSpec integers scaled by their scale factors.
Addresses, types, word orders, scales and constants come from the profile only.

Requests are answered from the image as it is between two updates, so a block
read always sees one consistent instant, and the control API's truth
(:meth:`Readings.meter`) is the same numbers the image was built from.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

import numpy as np
import numpy.typing as npt

from segs.protocol.profiles import Profile, Register
from segs.protocol.registers import RegisterType, WordOrder, encode_raw, encode_register
from segs.sim.physics import COUNTERS, Fleet

__all__ = [
    "IMAGE_DTYPE",
    "ImageMeter",
    "ProfileImage",
    "Readings",
    "Span",
    "readings",
    "served_spans",
]

_log = logging.getLogger(__name__)

IMAGE_DTYPE: Final = np.uint16
Array = npt.NDArray[np.float64]
Words = npt.NDArray[np.uint16]


# --- readings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Readings:
    """Every servable quantity of every meter at one instant: ``matrix[name_index, meter]``."""

    names: tuple[str, ...]
    matrix: Array
    index: Mapping[str, int]
    phases: npt.NDArray[np.int64]

    def value(self, name: str) -> Array:
        """Return quantity ``name`` of every meter."""
        row: Array = self.matrix[self.index[name]]
        return row

    def meter(self, meter: int) -> dict[str, float]:
        """Return one meter's quantities by name (phases it does not have are left out)."""
        column = self.matrix[:, meter].tolist()
        single = self.phases[meter] == 1
        return {
            name: value
            for name, value in zip(self.names, column, strict=True)
            if not (single and _is_multi_phase(name))
        }


def _is_multi_phase(name: str) -> bool:
    return "_l2" in name or "_l3" in name or name in {"current_neutral", "voltage_ll_average"}


def _degrees(q: Array, p: Array) -> Array:
    return np.degrees(np.arctan2(q, p))


def readings(fleet: Fleet) -> Readings:
    """Derive every quantity a register may serve from the fleet's state (units as profiles)."""
    v, i, p, q, s = fleet.voltage, fleet.current, fleet.power, fleet.reactive, fleet.apparent
    phases = fleet.phases.astype(np.float64)
    values: dict[str, Array] = {}
    for k in range(3):
        n = k + 1
        values[f"voltage_l{n}"] = v[:, k]
        values[f"current_l{n}"] = i[:, k]
        values[f"power_l{n}"] = p[:, k]
        values[f"apparent_power_l{n}"] = s[:, k]
        values[f"reactive_power_l{n}"] = q[:, k]
        values[f"power_factor_l{n}"] = fleet.power_factor[:, k]
        values[f"phase_angle_l{n}"] = _degrees(q[:, k], p[:, k])
    p_total, q_total, s_total = p.sum(axis=1), q.sum(axis=1), s.sum(axis=1)
    values["power_total"] = p_total
    values["apparent_power_total"] = s_total
    values["reactive_power_total"] = q_total
    values["power_factor_total"] = np.divide(
        p_total, s_total, out=np.ones_like(p_total), where=s_total > 1e-9
    )
    values["phase_angle_total"] = _degrees(q_total, p_total)
    values["voltage_ln_average"] = v.sum(axis=1) / phases
    values["current_average"] = i.sum(axis=1) / phases
    values["current_sum"] = i.sum(axis=1)
    values["frequency"] = fleet.frequency
    # Line-to-line voltages of a wye system 120 degrees apart: |Va - Vb| = sqrt(a^2 + b^2 + ab).
    pairs = ((0, 1), (1, 2), (2, 0))
    line = [np.sqrt(v[:, a] ** 2 + v[:, b] ** 2 + v[:, a] * v[:, b]) for a, b in pairs]
    for (a, b), value in zip(pairs, line, strict=True):
        values[f"voltage_l{a + 1}_l{b + 1}"] = value
    values["voltage_ll_average"] = (line[0] + line[1] + line[2]) / 3.0
    rotation = np.exp(-1j * np.radians([0.0, 120.0, 240.0]))
    neutral = (i * rotation[None, :] * np.exp(-1j * np.arctan2(q, p))).sum(axis=1)
    values["current_neutral"] = np.abs(neutral)

    counters = dict(zip(COUNTERS, fleet.counters, strict=True))
    suffixes = ("", "_l1", "_l2", "_l3")
    for name, counter in (
        ("import_energy", counters["import"]),
        ("export_energy", counters["export"]),
        ("import_apparent_energy", counters["import_apparent"]),
        ("export_apparent_energy", counters["export_apparent"]),
        ("import_reactive_energy_q1", counters["reactive_q1"]),
        ("import_reactive_energy_q2", counters["reactive_q2"]),
        ("export_reactive_energy_q3", counters["reactive_q3"]),
        ("export_reactive_energy_q4", counters["reactive_q4"]),
    ):
        for column, suffix in enumerate(suffixes):
            values[name + suffix] = counter[:, column]
    values["import_reactive_energy"] = (
        values["import_reactive_energy_q1"] + values["import_reactive_energy_q2"]
    )
    values["export_reactive_energy"] = (
        values["export_reactive_energy_q3"] + values["export_reactive_energy_q4"]
    )
    values["total_energy"] = values["import_energy"] + values["export_energy"]
    values["total_reactive_energy"] = (
        values["import_reactive_energy"] + values["export_reactive_energy"]
    )
    values["events"] = np.zeros(fleet.size)
    names = tuple(values)
    return Readings(
        names=names,
        matrix=np.stack([values[name] for name in names]),
        index={name: index for index, name in enumerate(names)},
        phases=fleet.phases,
    )


# --- identity registers -----------------------------------------------------------------------


@dataclass(frozen=True)
class ImageMeter:
    """A meter as its register image needs it."""

    fleet_index: int
    unit_id: int
    meter_id: str
    firmware: str


_IDENTITY: Final = frozenset(
    {
        "manufacturer",
        "device_model",
        "options",
        "firmware_version",
        "serial_number",
        "device_address",
    }
)
"""Registers that identify one meter (SunSpec common model), by register name."""


def _identity_value(name: str, meter: ImageMeter, profile: Profile) -> str | int:
    match name:
        case "manufacturer":
            return "SEGS"
        case "device_model":
            return f"sim-{profile.id}"
        case "options":
            return "simulated"
        case "firmware_version":
            return meter.firmware
        case "serial_number":
            return meter.meter_id
        case _:
            return meter.unit_id


# --- served address ranges --------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """A range of protocol addresses a profile answers for one function code."""

    function_code: int
    start: int
    end: int
    """Exclusive."""


def served_spans(profile: Profile) -> tuple[Span, ...]:
    """Return the address ranges a device of ``profile`` answers.

    They are the profile's block reads, joined where at most ``max_gap`` unused
    registers separate them: a real meter answers reads across the unlisted
    registers its manual says it answers (they read 0) and refuses the rest with
    exception 02.
    """
    spans: list[Span] = []
    for block in profile.blocks:
        end = block.address + block.count
        last = spans[-1] if spans else None
        if (
            last is not None
            and last.function_code == block.function_code
            and block.address - last.end <= profile.max_gap
        ):
            spans[-1] = Span(last.function_code, last.start, max(last.end, end))
        else:
            spans.append(Span(block.function_code, block.address, end))
    return tuple(spans)


# --- the image --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Group:
    """Registers of one encoding, updated together."""

    type: RegisterType
    names: tuple[str, ...]
    divisor: Array
    """Raw = value / divisor (divisor = scale * 10**sf)."""
    columns: npt.NDArray[np.intp]
    """Image columns the encoded words go to: (words per register * registers,)."""
    function_code: int


_INT_LIMITS: Final = {
    RegisterType.INT16: (-(2**15) + 1, 2**15 - 1, -(2**15), 1),
    RegisterType.UINT16: (0, 2**16 - 2, 2**16 - 1, 1),
    RegisterType.INT32: (-(2**31) + 1, 2**31 - 1, -(2**31), 2),
    RegisterType.UINT32: (0, 2**32 - 2, 2**32 - 1, 2),
}
"""(lowest, highest, "not implemented" marker, registers) of each integer type.

Values beyond the range are clamped so a big value never turns into the marker.
"""


def _multiplier(register: Register, factors: Mapping[str, int]) -> float:
    sf = factors.get(register.scale_factor, 0) if register.scale_factor is not None else 0
    return float(Decimal(repr(register.scale)).scaleb(sf))


def _scale_factors(profile: Profile) -> dict[str, int]:
    """The value each sunssf register serves: the profile's typical value, else 0."""
    return {
        reg.name: reg.value if isinstance(reg.value, int) else 0
        for reg in profile.registers
        if reg.type is RegisterType.SUNSSF
    }


class ProfileImage:
    """The register images of every meter of one profile, rebuilt together on each update."""

    def __init__(
        self, profile: Profile, meters: Sequence[ImageMeter], names: Sequence[str]
    ) -> None:
        """Lay out the image; ``names`` are the quantities :func:`readings` provides."""
        if not meters:
            raise ValueError(f"profile {profile.id!r}: an image needs at least one meter")
        self.profile = profile
        self.meters = tuple(meters)
        self.rows = np.array([m.fleet_index for m in meters], dtype=np.intp)
        self.spans = served_spans(profile)
        codes = sorted({span.function_code for span in self.spans})
        self.base = {fc: min(s.start for s in self.spans if s.function_code == fc) for fc in codes}
        width = {
            fc: max(s.end for s in self.spans if s.function_code == fc) - self.base[fc]
            for fc in codes
        }
        shape = len(meters)
        self.images: dict[int, Words] = {
            fc: np.zeros((shape, width[fc]), dtype=IMAGE_DTYPE) for fc in codes
        }
        self._groups = self._layout(set(names))
        self.missing: dict[int, Words] = {fc: image.copy() for fc, image in self.images.items()}
        """The image with every measured value "not implemented" (the garbage fault's NaNs)."""
        for group in self._groups:
            self._write(group, np.full((shape, len(group.names)), np.nan), self.missing)

    def _layout(self, available: set[str]) -> tuple[_Group, ...]:
        """Write the constants; group the measured registers by encoding."""
        factors = _scale_factors(self.profile)
        grouped: dict[tuple[RegisterType, int], list[tuple[Register, float]]] = {}
        unknown: list[str] = []
        for reg in self.profile.registers:
            if reg.type is RegisterType.SUNSSF:
                self._constant(reg, encode_raw(factors[reg.name], reg.type, reg.word_order))
            elif reg.value is not None:
                self._constant(reg, encode_raw(reg.value, reg.type, reg.word_order, _length(reg)))
            elif reg.name in _IDENTITY:
                for row, meter in enumerate(self.meters):
                    self._set(reg, row, self._identity(reg, meter))
            elif reg.name in available and reg.type is not RegisterType.STRING:
                key = (reg.type, reg.function_code)
                grouped.setdefault(key, []).append((reg, _multiplier(reg, factors)))
            else:
                unknown.append(reg.name)
                self._constant(reg, encode_raw(None, reg.type, reg.word_order, _length(reg)))
        if unknown:
            _log.warning(
                "profile %r: the simulator has no value for %s; they read 'not implemented'",
                self.profile.id,
                ", ".join(unknown),
            )
        groups = []
        for (reg_type, fc), members in grouped.items():
            columns: list[int] = []
            for reg, _ in members:
                start = reg.address - self.base[fc]
                words = list(range(start, start + reg.count))
                if reg.word_order is WordOrder.LITTLE and reg.count == 2:
                    words.reverse()
                columns += words
            groups.append(
                _Group(
                    type=reg_type,
                    names=tuple(reg.name for reg, _ in members),
                    divisor=np.array([m for _, m in members]),
                    columns=np.array(columns, dtype=np.intp),
                    function_code=fc,
                )
            )
        return tuple(groups)

    def _identity(self, reg: Register, meter: ImageMeter) -> list[int]:
        value = _identity_value(reg.name, meter, self.profile)
        if isinstance(value, str):
            value = value[: 2 * reg.count]
        return encode_register(reg, value)

    def _constant(self, reg: Register, words: list[int]) -> None:
        start = reg.address - self.base[reg.function_code]
        self.images[reg.function_code][:, start : start + reg.count] = words

    def _set(self, reg: Register, row: int, words: list[int]) -> None:
        start = reg.address - self.base[reg.function_code]
        self.images[reg.function_code][row, start : start + reg.count] = words

    def update(self, values: Readings) -> None:
        """Rebuild every measured register of every meter from ``values``."""
        for group in self._groups:
            index = [values.index[name] for name in group.names]
            self._write(group, values.matrix[index][:, self.rows].T, self.images)

    def _write(self, group: _Group, physical: Array, images: dict[int, Words]) -> None:
        """Encode ``physical`` (meters x registers, NaN = not implemented) into ``images``."""
        raw = physical / group.divisor
        words: Words
        if group.type is RegisterType.FLOAT32:
            words = raw.astype(">f4").view(">u2").astype(IMAGE_DTYPE)
        elif group.type is RegisterType.ACC32:
            # A counter is floored, never rounded up: it never shows energy not yet used.
            missing = ~np.isfinite(raw)
            ticks = np.floor(np.where(missing, 0.0, raw)).astype(np.int64) % 2**32
            words = _split32(ticks)
        else:
            low, high, marker, count = _INT_LIMITS[group.type]
            missing = ~np.isfinite(raw)
            whole = np.clip(np.rint(np.where(missing, 0.0, raw)), low, high).astype(np.int64)
            whole = np.where(missing, marker, whole)
            words = (whole & 0xFFFF).astype(IMAGE_DTYPE) if count == 1 else _split32(whole)
        images[group.function_code][:, group.columns] = words

    # --- answering ----------------------------------------------------------------------------

    def span_of(self, function_code: int, address: int, count: int) -> Span | None:
        """Return the served span holding the whole read, or ``None`` (exception 02)."""
        end = address + count
        for span in self.spans:
            if span.function_code == function_code and span.start <= address and end <= span.end:
                return span
        return None

    def words(
        self, row: int, function_code: int, address: int, count: int, *, missing: bool = False
    ) -> list[int]:
        """Return ``count`` registers of meter ``row`` from ``address`` (check :meth:`span_of`)."""
        images = self.missing if missing else self.images
        start = address - self.base[function_code]
        result: list[int] = images[function_code][row, start : start + count].tolist()
        return result


def _split32(values: npt.NDArray[np.int64]) -> Words:
    """Split 32-bit values (meters x registers) into high, low words, interleaved per register."""
    unsigned = values & 0xFFFFFFFF
    words = np.empty((values.shape[0], values.shape[1] * 2), dtype=IMAGE_DTYPE)
    words[:, 0::2] = unsigned >> 16
    words[:, 1::2] = unsigned & 0xFFFF
    return words


def _length(reg: Register) -> int | None:
    return reg.count if reg.type is RegisterType.STRING else None
