"""Modbus device profiles: register maps as data, validated on load, with a coalesced read plan.

A profile is one TOML file (shipped ones live in ``device_profiles/``). It names
every register the edge reads from one kind of meter: where it is (function code,
0-based protocol address), how it is encoded (:class:`RegisterType`,
:class:`WordOrder`) and what it means after scaling (``unit``, ``scale``, SunSpec
``scale_factor``). :func:`parse_profile` rejects anything inconsistent with a
:class:`~segs.protocol.errors.ProfileError` naming the profile and the register,
so a bad map fails when the configuration loads, not in the poll loop.

The read plan (:func:`plan_blocks`) coalesces registers into as few block reads
as the profile's ``max_gap``/``max_block`` allow; :meth:`Profile.decode_block`
fans one block read out into named physical values.

Registers with a name in :data:`CANONICAL_UNITS` carry the unit fixed there;
consumers rely on those names and units (import positive, export negative).
A profile may add other snake_case names freely.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, NoReturn, TypeGuard

from segs.protocol.errors import ProfileError, ProtocolError
from segs.protocol.limits import MAX_ID_LENGTH
from segs.protocol.registers import (
    RegisterType,
    RegisterValueError,
    WordOrder,
    decode_raw,
    decode_register,
    encode_raw,
    register_count,
)

__all__ = [
    "CANONICAL_UNITS",
    "FUNCTION_CODES",
    "MAX_READ_REGISTERS",
    "SUNSPEC_BASE",
    "SUNSPEC_END_ID",
    "SUNSPEC_MARKER",
    "Block",
    "Profile",
    "Register",
    "SunSpecError",
    "load_profile",
    "parse_profile",
    "plan_blocks",
    "relocate_sunspec",
    "shipped_profiles",
    "sunspec_models",
]

MAX_READ_REGISTERS: Final = 125
"""Most registers one Modbus FC03/FC04 read may return (the PDU limit)."""

FUNCTION_CODES: Final = frozenset({3, 4})
"""Read function codes a register may use: 3 (holding registers), 4 (input registers)."""

SUNSPEC_BASE: Final = 40000
"""Protocol address of the ``SunS`` marker on most SunSpec devices (register 40001)."""

SUNSPEC_MARKER: Final = (0x5375, 0x6E53)
"""The two registers that open a SunSpec map: ASCII ``SunS``."""

SUNSPEC_END_ID: Final = 0xFFFF
"""The model id that ends a SunSpec model chain."""


def _phases(quantity: str, unit: str) -> dict[str, str]:
    return {f"{quantity}_l{n}": unit for n in (1, 2, 3)}


CANONICAL_UNITS: Final[Mapping[str, str]] = MappingProxyType(
    {
        **_phases("voltage", "V"),
        **_phases("current", "A"),
        **_phases("power", "kW"),
        "power_total": "kW",
        **_phases("apparent_power", "kVA"),
        "apparent_power_total": "kVA",
        **_phases("reactive_power", "kvar"),
        "reactive_power_total": "kvar",
        **_phases("power_factor", ""),
        "power_factor_total": "",
        "frequency": "Hz",
        "import_energy": "kWh",
        "export_energy": "kWh",
        "total_energy": "kWh",
        "import_reactive_energy": "kvarh",
        "export_reactive_energy": "kvarh",
    }
)
"""Register names consumers rely on, with the unit their decoded value must have.

Active power is positive when importing and negative when exporting; power
factors are ratios in -1..1. Per-phase names ``*_l2``/``*_l3`` only exist in
three-phase profiles; a single-phase profile has ``*_l1`` and no ``*_total``
power, so consumers sum the phases when ``power_total`` is absent.
"""

_NAME: Final = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
_PROFILE_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_PHASE_SUFFIX: Final = re.compile(r"_l([1-9])$")

_PROFILE_KEYS: Final = frozenset(
    {
        "id",
        "manufacturer",
        "model",
        "description",
        "reference",
        "phases",
        "function_code",
        "word_order",
        "max_gap",
        "max_block",
        "registers",
    }
)
_PROFILE_REQUIRED: Final = ("id", "manufacturer", "model", "description", "reference", "phases")
_REGISTER_KEYS: Final = frozenset(
    {
        "name",
        "function_code",
        "address",
        "type",
        "count",
        "length",
        "word_order",
        "unit",
        "scale",
        "scale_factor",
        "value",
        "description",
        "model",
        "offset",
    }
)
_REGISTER_REQUIRED: Final = ("name", "address", "type", "unit")
_DATA_FOLDER: Final = "device_profiles"


class SunSpecError(ProtocolError, ValueError):
    """A device does not present a well-formed SunSpec map."""


@dataclass(frozen=True)
class Register:
    """One value in a device's register map."""

    name: str
    """snake_case, unique in the profile; canonical names carry the unit of CANONICAL_UNITS."""
    function_code: int
    """3 (holding registers) or 4 (input registers)."""
    address: int
    """Protocol address (0-based, as sent on the wire), 0..65535."""
    type: RegisterType
    count: int
    """Registers occupied."""
    word_order: WordOrder
    unit: str
    """Unit of the decoded value after scaling ("" for dimensionless)."""
    scale: float = 1.0
    """Fixed multiplier (0.001 for W → kW; negative to flip a sign convention)."""
    scale_factor: str | None = None
    """Name of the sunssf register that scales this one (value * scale * 10**sf)."""
    value: int | str | None = None
    """A raw constant the device holds (SunSpec marker, model ids and lengths, typical SFs)."""
    description: str = ""
    model: int | None = None
    """SunSpec model this register belongs to (1, 203, 0xFFFF for the end marker)."""
    offset: int | None = None
    """Offset from the SunSpec model's ID register, so the map can be relocated."""


@dataclass(frozen=True)
class Block:
    """One coalesced read: ``count`` registers from ``address`` with ``function_code``."""

    function_code: int
    address: int
    count: int
    registers: tuple[Register, ...]
    """The registers the read covers, by address; gaps between them are read and ignored."""


@dataclass(frozen=True)
class Profile:
    """A validated device profile and its read plan; build it with :func:`load_profile`."""

    id: str
    manufacturer: str
    model: str
    description: str
    reference: str
    """Which manual or specification the map comes from, and its address rule."""
    phases: int
    registers: tuple[Register, ...]
    """Sorted by (function_code, address)."""
    blocks: tuple[Block, ...]
    """The coalesced read plan, sorted by (function_code, address)."""
    max_gap: int
    """Largest run of unused registers a block read may span to join two registers."""
    max_block: int
    """Most registers one block read may return."""
    _by_name: Mapping[str, Register] = field(init=False, repr=False, compare=False)
    _block_by_name: Mapping[str, Block] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", MappingProxyType({r.name: r for r in self.registers}))
        object.__setattr__(
            self,
            "_block_by_name",
            MappingProxyType({r.name: b for b in self.blocks for r in b.registers}),
        )

    def has_register(self, name: str) -> bool:
        """Return whether the profile defines a register called ``name``."""
        return name in self._by_name

    def register(self, name: str) -> Register:
        """Return the register called ``name``; :class:`ProfileError` if there is none."""
        try:
            return self._by_name[name]
        except KeyError:
            raise ProfileError(f"profile {self.id!r} has no register {name!r}") from None

    def block_of(self, name: str) -> Block:
        """Return the block read that covers register ``name``."""
        try:
            return self._block_by_name[name]
        except KeyError:
            raise ProfileError(f"profile {self.id!r} has no register {name!r}") from None

    def decode_block(
        self,
        block: Block,
        regs: Sequence[int],
        scale_factors: Mapping[str, int | None] | None = None,
    ) -> dict[str, float | int | str | None]:
        """Decode one block read into ``{register name: physical value or None}``.

        Scale factors come from the sunssf registers of the same read. When a
        register's scale factor lives in another block, pass its decoded value
        (``None`` when unavailable) in ``scale_factors``, keyed by the sunssf
        register's name; :meth:`decode` does that across a whole poll. A scale
        factor found neither way raises :class:`ProfileError` (a caller bug);
        a missing one (``None``) makes the value ``None``. Raises
        :class:`~segs.protocol.registers.RegisterValueError` when ``regs`` is not
        ``block.count`` registers of 0..65535.
        """
        if len(regs) != block.count:
            raise RegisterValueError(
                f"profile {self.id!r}: the block at {block.address} (FC{block.function_code:02d})"
                f" has {block.count} registers, got {len(regs)}"
            )
        factors: dict[str, int | None] = dict(scale_factors or {})
        factors.update(_block_scale_factors(block, regs))
        values: dict[str, float | int | str | None] = {}
        for reg in block.registers:
            factor: int | None = None
            if reg.scale_factor is not None:
                if reg.scale_factor not in factors:
                    raise ProfileError(
                        f"profile {self.id!r}, register {reg.name!r}: its scale factor "
                        f"{reg.scale_factor!r} is not in this block; pass it in scale_factors"
                    )
                factor = factors[reg.scale_factor]
            values[reg.name] = decode_register(reg, _slice(block, reg, regs), factor)
        return values

    def decode(self, reads: Sequence[Sequence[int] | None]) -> dict[str, float | int | str | None]:
        """Decode one poll: ``reads[i]`` is the read of ``blocks[i]``, ``None`` when it failed.

        Registers of a failed read, and registers scaled by a scale factor of a
        failed read, decode to ``None``; every register of the profile is in the result.
        """
        if len(reads) != len(self.blocks):
            raise RegisterValueError(
                f"profile {self.id!r} plans {len(self.blocks)} reads, got {len(reads)}"
            )
        factors: dict[str, int | None] = {}
        for block, regs in zip(self.blocks, reads, strict=True):
            if regs is None:
                factors.update(
                    (r.name, None) for r in block.registers if r.type is RegisterType.SUNSSF
                )
            elif len(regs) == block.count:
                factors.update(_block_scale_factors(block, regs))
        values: dict[str, float | int | str | None] = {}
        for block, regs in zip(self.blocks, reads, strict=True):
            if regs is None:
                values.update((r.name, None) for r in block.registers)
            else:
                values.update(self.decode_block(block, regs, factors))
        return values


def _slice(block: Block, reg: Register, regs: Sequence[int]) -> Sequence[int]:
    start = reg.address - block.address
    return regs[start : start + reg.count]


def _block_scale_factors(block: Block, regs: Sequence[int]) -> dict[str, int | None]:
    factors: dict[str, int | None] = {}
    for reg in block.registers:
        if reg.type is RegisterType.SUNSSF:
            value = decode_raw(_slice(block, reg, regs), RegisterType.SUNSSF)
            factors[reg.name] = value if isinstance(value, int) else None
    return factors


# --- read planning ---------------------------------------------------------------------------


def plan_blocks(
    registers: Iterable[Register],
    *,
    max_block: int = MAX_READ_REGISTERS,
    max_gap: int = 0,
) -> tuple[Block, ...]:
    """Coalesce registers into block reads, per function code, in address order.

    A register joins the current block while the unused gap before it is at most
    ``max_gap`` registers and the block stays within ``max_block`` registers; a
    register is never split. Raises :class:`ProfileError` for limits outside
    1..125 / below 0 and for a register larger than ``max_block``.
    """
    if isinstance(max_block, bool) or not 1 <= max_block <= MAX_READ_REGISTERS:
        raise ProfileError(f"max_block must be 1..{MAX_READ_REGISTERS}, got {max_block!r}")
    if isinstance(max_gap, bool) or max_gap < 0:
        raise ProfileError(f"max_gap must be >= 0, got {max_gap!r}")
    blocks: list[Block] = []
    current: list[Register] = []
    start = end = 0
    for reg in sorted(registers, key=lambda r: (r.function_code, r.address, r.count, r.name)):
        if reg.count > max_block:
            raise ProfileError(
                f"register {reg.name!r} occupies {reg.count} registers, more than max_block "
                f"{max_block}"
            )
        reg_end = reg.address + reg.count
        if (
            current
            and reg.function_code == current[0].function_code
            and reg.address - end <= max_gap
            and max(end, reg_end) - start <= max_block
        ):
            current.append(reg)
            end = max(end, reg_end)
            continue
        if current:
            blocks.append(Block(current[0].function_code, start, end - start, tuple(current)))
        current, start, end = [reg], reg.address, reg_end
    if current:
        blocks.append(Block(current[0].function_code, start, end - start, tuple(current)))
    return tuple(blocks)


# --- loading and validation ------------------------------------------------------------------


def _fail(where: str, problem: str) -> NoReturn:
    raise ProfileError(f"{where}: {problem}")


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _str(table: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        _fail(where, f"{key} must be a string, got {value!r}")
    return value


def _int(
    table: Mapping[str, Any], key: str, where: str, bounds: range, default: int | None = None
) -> int:
    value = table.get(key, default)
    if not _is_int(value):
        _fail(where, f"{key} must be an integer, got {value!r}")
    if value not in bounds:
        _fail(where, f"{key} must be {bounds.start}..{bounds.stop - 1}, got {value}")
    return value


def _check_keys(
    table: Mapping[str, Any], allowed: frozenset[str], required: Sequence[str], where: str
) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        _fail(where, f"unknown key(s) {', '.join(unknown)}")
    missing = [key for key in required if key not in table]
    if missing:
        _fail(where, f"missing key(s) {', '.join(missing)}")


def parse_profile(data: Mapping[str, Any], *, source: str) -> Profile:
    """Validate a profile as parsed from TOML and build it with its read plan.

    ``source`` (a file name) appears in error messages next to the profile id.
    Raises :class:`ProfileError` naming the profile and the register for unknown
    or missing keys, wrong types, function codes other than 3/4, addresses
    outside 0..65535, registers overlapping within a function code, duplicate
    names, a ``count`` that does not match the type, a string without
    ``length``, a ``value`` that does not fit the type, a ``scale_factor`` naming
    a missing or non-sunssf register, a canonical name with the wrong unit (or a
    phase the profile does not have), ``max_block`` outside 1..125, ``phases``
    other than 1/3, and SunSpec ``model``/``offset`` that disagree with the
    model's ID register.
    """
    if not isinstance(data, Mapping):
        _fail(f"profile from {source}", "the document must be a table")
    pid = data.get("id")
    if not isinstance(pid, str) or not _valid_profile_id(pid):
        _fail(
            f"profile from {source}",
            f"id must be letters, digits and . _ - (at most {MAX_ID_LENGTH}), got {pid!r}",
        )
    where = f"profile {pid!r} ({source})"
    _check_keys(data, _PROFILE_KEYS, (*_PROFILE_REQUIRED, "registers"), where)
    phases = data["phases"]
    if not _is_int(phases) or phases not in (1, 3):
        _fail(where, f"phases must be 1 or 3, got {phases!r}")
    default_fc = data.get("function_code")
    if default_fc is not None:
        default_fc = _function_code(default_fc, where)
    default_order = _word_order(data.get("word_order", WordOrder.BIG.value), where)
    max_gap = _int(data, "max_gap", where, range(65536), default=0)
    max_block = _int(data, "max_block", where, range(1, MAX_READ_REGISTERS + 1), MAX_READ_REGISTERS)

    table = data["registers"]
    if not isinstance(table, list) or not table:
        _fail(where, "registers must be a non-empty array of tables ([[registers]])")
    registers: dict[str, Register] = {}
    for index, raw in enumerate(table, start=1):
        reg = _parse_register(raw, index, where, default_fc, default_order)
        if reg.name in registers:
            _fail(f"{where}, register {reg.name!r}", "duplicate name")
        if reg.count > max_block:
            _fail(
                f"{where}, register {reg.name!r}",
                f"occupies {reg.count} registers, more than max_block {max_block}",
            )
        registers[reg.name] = reg

    ordered = tuple(sorted(registers.values(), key=lambda r: (r.function_code, r.address)))
    _check_overlaps(ordered, where)
    for reg in ordered:
        _check_semantics(reg, registers, phases, f"{where}, register {reg.name!r}")
    _check_sunspec_layout(ordered, where)
    return Profile(
        id=pid,
        manufacturer=_str(data, "manufacturer", where),
        model=_str(data, "model", where),
        description=_str(data, "description", where),
        reference=_str(data, "reference", where),
        phases=phases,
        registers=ordered,
        blocks=plan_blocks(ordered, max_block=max_block, max_gap=max_gap),
        max_gap=max_gap,
        max_block=max_block,
    )


def _valid_profile_id(pid: str) -> bool:
    return len(pid) <= MAX_ID_LENGTH and _PROFILE_ID.fullmatch(pid) is not None


def _function_code(value: object, where: str) -> int:
    if not _is_int(value) or value not in FUNCTION_CODES:
        _fail(where, f"function_code must be 3 (holding) or 4 (input), got {value!r}")
    return value


def _word_order(value: object, where: str) -> WordOrder:
    if not isinstance(value, str) or value not in tuple(WordOrder):
        _fail(where, f"word_order must be one of {', '.join(WordOrder)}, got {value!r}")
    return WordOrder(value)


def _parse_register(
    raw: object, index: int, profile: str, default_fc: int | None, default_order: WordOrder
) -> Register:
    if not isinstance(raw, Mapping):
        _fail(f"{profile}, register #{index}", "must be a table")
    name = raw.get("name")
    where = (
        f"{profile}, register {name!r}"
        if isinstance(name, str)
        else f"{profile}, register #{index}"
    )
    _check_keys(raw, _REGISTER_KEYS, _REGISTER_REQUIRED, where)
    name = _str(raw, "name", where)
    if len(name) > MAX_ID_LENGTH or _NAME.fullmatch(name) is None:
        _fail(
            where, "name must be snake_case (a-z, 0-9, single underscores, starting with a letter)"
        )
    reg_type, length, count = _parse_shape(raw, where)
    fc = raw.get("function_code", default_fc)
    if fc is None:
        _fail(where, "no function_code, and the profile sets no default")
    address = _int(raw, "address", where, range(65536))
    if address + count > 65536:
        _fail(where, f"address {address} + {count} registers runs past 65535")
    scale, scale_factor = _parse_scaling(raw, reg_type, where)
    value = raw.get("value")
    if value is not None:
        if not isinstance(value, int | str) or isinstance(value, bool):
            _fail(where, f"value must be an integer or a string, got {value!r}")
        try:
            encode_raw(value, reg_type, length=length)
        except RegisterValueError as exc:
            _fail(where, f"value {value!r} does not fit: {exc}")
    model, offset = raw.get("model"), raw.get("offset")
    if (model is None) != (offset is None):
        _fail(where, "model and offset go together (SunSpec registers give both)")
    if model is not None:
        model = _int(raw, "model", where, range(1, 65536))
        offset = _int(raw, "offset", where, range(65536))
    return Register(
        name=name,
        function_code=_function_code(fc, where),
        address=address,
        type=reg_type,
        count=count,
        word_order=_word_order(raw.get("word_order", default_order.value), where),
        unit=_str(raw, "unit", where),
        scale=scale,
        scale_factor=scale_factor,
        value=value,
        description=_str(raw, "description", where, default=""),
        model=model,
        offset=offset,
    )


def _parse_shape(raw: Mapping[str, Any], where: str) -> tuple[RegisterType, int | None, int]:
    """Return the register's type, string length and register count."""
    type_name = raw["type"]
    if type_name not in tuple(RegisterType):
        _fail(where, f"type must be one of {', '.join(RegisterType)}, got {type_name!r}")
    reg_type = RegisterType(type_name)
    length = raw.get("length")
    if reg_type is RegisterType.STRING:
        if length is None:
            _fail(where, "a string register needs a length (in registers)")
        length = _int(raw, "length", where, range(1, MAX_READ_REGISTERS + 1))
    elif length is not None:
        _fail(where, f"length applies to strings only, not {reg_type.value}")
    count = register_count(reg_type, length)
    if "count" in raw and (not _is_int(raw["count"]) or raw["count"] != count):
        _fail(where, f"count {raw['count']!r} does not match {reg_type.value} ({count} registers)")
    return reg_type, length, count


def _parse_scaling(
    raw: Mapping[str, Any], reg_type: RegisterType, where: str
) -> tuple[float, str | None]:
    """Return the register's fixed scale and the name of its scale factor register."""
    scale = raw.get("scale", 1.0)
    if not isinstance(scale, int | float) or isinstance(scale, bool) or not math.isfinite(scale):
        _fail(where, f"scale must be a finite number, got {scale!r}")
    if scale == 0:
        _fail(where, "scale must not be 0")
    scale_factor = raw.get("scale_factor")
    if scale_factor is not None and not isinstance(scale_factor, str):
        _fail(where, f"scale_factor must be the name of a sunssf register, got {scale_factor!r}")
    if reg_type in (RegisterType.STRING, RegisterType.SUNSSF) and (
        scale != 1 or scale_factor is not None
    ):
        _fail(where, f"a {reg_type.value} register cannot be scaled")
    return float(scale), scale_factor


def _check_overlaps(ordered: Sequence[Register], where: str) -> None:
    """Fail when two registers of one function code share an address (``ordered`` is sorted)."""
    holder: Register | None = None
    for reg in ordered:
        if (
            holder is not None
            and holder.function_code == reg.function_code
            and reg.address < holder.address + holder.count
        ):
            _fail(
                f"{where}, register {reg.name!r}",
                f"address {reg.address} overlaps register {holder.name!r} "
                f"({holder.address}..{holder.address + holder.count - 1}, "
                f"FC{reg.function_code:02d})",
            )
        if (
            holder is None
            or holder.function_code != reg.function_code
            or reg.address + reg.count > holder.address + holder.count
        ):
            holder = reg


def _check_semantics(
    reg: Register, registers: Mapping[str, Register], phases: int, where: str
) -> None:
    if reg.scale_factor is not None:
        target = registers.get(reg.scale_factor)
        if target is None:
            _fail(where, f"scale_factor {reg.scale_factor!r} is not a register of the profile")
        if target.type is not RegisterType.SUNSSF:
            _fail(where, f"scale_factor {reg.scale_factor!r} is {target.type.value}, not sunssf")
    expected = CANONICAL_UNITS.get(reg.name)
    if expected is not None:
        if reg.unit != expected:
            _fail(where, f"unit must be {expected!r} for this canonical name, got {reg.unit!r}")
        if reg.type is RegisterType.STRING:
            _fail(where, "a canonical quantity cannot be a string")
        phase = _PHASE_SUFFIX.search(reg.name)
        if phase is not None and int(phase.group(1)) > phases:
            _fail(where, f"the profile has {phases} phase(s), so no phase {phase.group(1)}")


def _check_sunspec_layout(ordered: Sequence[Register], where: str) -> None:
    """Check ``model``/``offset`` against each model's ID (offset 0) and length (offset 1)."""
    models: dict[int, dict[int, Register]] = {}
    for reg in ordered:
        if reg.model is not None and reg.offset is not None:
            models.setdefault(reg.model, {})[reg.offset] = reg
    for model, members in models.items():
        head, size = members.get(0), members.get(1)
        first = f"{where}, register {next(iter(members.values())).name!r}"
        if head is None or head.type is not RegisterType.UINT16 or head.value != model:
            _fail(first, f"model {model} needs an ID register: offset 0, uint16, value {model}")
        length = None if size is None or size.type is not RegisterType.UINT16 else size.value
        if not _is_int(length):
            _fail(first, f"model {model} needs a length register: offset 1, uint16 with a value")
        for offset, reg in members.items():
            here = f"{where}, register {reg.name!r}"
            if reg.address != head.address + offset:
                _fail(
                    here,
                    f"address {reg.address} is not model {model}'s ID address {head.address} "
                    f"+ offset {offset}",
                )
            if offset + reg.count > length + 2:
                _fail(here, f"offset {offset} runs past model {model}'s length {length}")


def _data_folder() -> Traversable:
    return resources.files("segs.protocol") / _DATA_FOLDER


def shipped_profiles() -> tuple[str, ...]:
    """Return the ids of the profiles shipped with SEGS, sorted."""
    return tuple(
        sorted(
            entry.name.removesuffix(".toml")
            for entry in _data_folder().iterdir()
            if entry.name.endswith(".toml")
        )
    )


def _parse_toml(text: str, source: str) -> Profile:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"profile from {source}: not valid TOML: {exc}") from None
    return parse_profile(data, source=source)


@cache
def _load_shipped(name: str) -> Profile:
    source = f"{_DATA_FOLDER}/{name}.toml"
    profile = _parse_toml((_data_folder() / f"{name}.toml").read_text(encoding="utf-8"), source)
    if profile.id != name:
        raise ProfileError(f"profile {profile.id!r} ({source}): id must match the file name")
    return profile


def load_profile(name_or_path: str | os.PathLike[str]) -> Profile:
    """Load a shipped profile by id (see :func:`shipped_profiles`) or a profile file by path."""
    if isinstance(name_or_path, str) and name_or_path in shipped_profiles():
        return _load_shipped(name_or_path)
    path = Path(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(
            f"profile {os.fspath(name_or_path)!r}: neither a shipped profile "
            f"({', '.join(shipped_profiles())}) nor an existing file"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"profile from {path}: cannot read it: {exc}") from exc
    return _parse_toml(text, str(path))


# --- SunSpec -----------------------------------------------------------------------------------


def sunspec_models(
    read: Callable[[int, int], Sequence[int]], base: int = SUNSPEC_BASE
) -> list[tuple[int, int, int]]:
    """Walk a SunSpec model chain: ``[(model_id, address_of_id_register, length), ...]``.

    ``read(address, count)`` returns ``count`` holding registers. Checks the
    ``SunS`` marker at ``base``, then follows each model's ID and length until
    the end marker (0xFFFF), which is not in the result. Raises
    :class:`SunSpecError` when the marker is missing or the chain is malformed.
    """
    marker = list(read(base, 2))
    if marker != list(SUNSPEC_MARKER):
        raise SunSpecError(f"no SunS marker at {base}: got {marker!r}")
    models: list[tuple[int, int, int]] = []
    address = base + 2
    while True:
        if address + 2 > 65536:
            raise SunSpecError(f"the model chain runs past address 65535 (at {address})")
        header = list(read(address, 2))
        if len(header) != 2:
            raise SunSpecError(f"model header at {address}: expected 2 registers, got {header!r}")
        model_id, length = header
        if model_id == SUNSPEC_END_ID:
            return models
        models.append((model_id, address, length))
        address += 2 + length


def relocate_sunspec(profile: Profile, models: Sequence[tuple[int, int, int]]) -> Profile:
    """Move a SunSpec profile's registers to where a device's model chain puts them.

    ``models`` is what :func:`sunspec_models` found. Registers with ``model`` and
    ``offset`` move to the model's ID address + offset (the end marker, model
    0xFFFF, follows the last model); the length registers take the device's
    lengths; registers without a model (``sunspec_id``) stay. Raises
    :class:`ProfileError` when the device lacks a model the profile reads or
    its model is too short for a register.
    """
    if not models:
        raise ProfileError(f"profile {profile.id!r}: the device reports no SunSpec models")
    found: dict[int, tuple[int, int]] = {}
    for model_id, address, length in models:
        found.setdefault(model_id, (address, length))
    _, last_address, last_length = models[-1]
    found.setdefault(SUNSPEC_END_ID, (last_address + 2 + last_length, 0))
    moved: list[Register] = []
    for reg in profile.registers:
        if reg.model is None or reg.offset is None:
            moved.append(reg)
            continue
        where = f"profile {profile.id!r}, register {reg.name!r}"
        if reg.model not in found:
            _fail(where, f"the device has no SunSpec model {reg.model}")
        address, length = found[reg.model]
        if reg.offset + reg.count > length + 2:
            _fail(where, f"the device's model {reg.model} has length {length}, too short")
        value = length if reg.offset == 1 else reg.value
        moved.append(replace(reg, address=address + reg.offset, value=value))
    ordered = tuple(sorted(moved, key=lambda r: (r.function_code, r.address)))
    _check_overlaps(ordered, f"profile {profile.id!r} (relocated)")
    return replace(
        profile,
        registers=ordered,
        blocks=plan_blocks(ordered, max_block=profile.max_block, max_gap=profile.max_gap),
    )
