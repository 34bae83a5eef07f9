"""Modbus register value codec: raw 16-bit registers to Python values and back.

Pure Python (``struct``), so both the edge (reading meters) and the simulator
(serving them) use the same code without importing a Modbus library.

Two layers:

* :func:`decode_raw` / :func:`encode_raw` turn registers into the unscaled value
  of a :class:`RegisterType` and back. "Not implemented" markers (SunSpec) and
  non-finite floats decode to ``None``; :func:`encode_raw` turns ``None`` into
  the type's marker.
* :func:`decode_register` / :func:`encode_register` add physical scaling for a
  register described by a device profile, always in one order: swap words,
  unpack, scale by ``scale * 10**sf``, missing → ``None``.

Bytes inside a register are always big-endian, as Modbus defines; only the
order of the two words of a 32-bit value varies between devices
(:class:`WordOrder`). Strings are stored two ASCII characters per register,
first character in the high byte, in register order (word order does not apply).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from decimal import ROUND_HALF_EVEN, Context, Decimal
from enum import StrEnum
from typing import Final, Protocol

from segs.protocol.errors import ProtocolError

__all__ = [
    "SCALE_FACTOR_RANGE",
    "RegisterLike",
    "RegisterType",
    "RegisterValueError",
    "WordOrder",
    "decode_raw",
    "decode_register",
    "encode_raw",
    "encode_register",
    "register_count",
]


class RegisterType(StrEnum):
    """How the value of a register (or register pair/run) is encoded."""

    FLOAT32 = "float32"
    """IEEE 754 single precision in two registers; NaN and infinities decode to ``None``."""
    INT16 = "int16"
    """Signed 16-bit; 0x8000 is SunSpec's "not implemented"."""
    UINT16 = "uint16"
    """Unsigned 16-bit; 0xFFFF is SunSpec's "not implemented"."""
    INT32 = "int32"
    """Signed 32-bit in two registers; 0x80000000 is "not implemented"."""
    UINT32 = "uint32"
    """Unsigned 32-bit in two registers; 0xFFFFFFFF is "not implemented"."""
    ACC32 = "acc32"
    """SunSpec unsigned 32-bit accumulator (energy counters); every value is valid, 0 included."""
    SUNSSF = "sunssf"
    """SunSpec scale factor: signed 16-bit power of ten in -10..10; 0x8000 is "not implemented"."""
    STRING = "string"
    """ASCII text, two characters per register, padded with NUL (or spaces)."""


class WordOrder(StrEnum):
    """Order of the two 16-bit words of a 32-bit value."""

    BIG = "big"
    """Most significant word first (Modbus convention; Eastron, SunSpec)."""
    LITTLE = "little"
    """Least significant word first ("word swapped")."""


class RegisterValueError(ProtocolError, ValueError):
    """A value does not fit a register type, or registers do not match the type's size."""


class RegisterLike(Protocol):
    """What the scaled codec needs to know about a register (``profiles.Register`` fits)."""

    @property
    def name(self) -> str: ...
    @property
    def type(self) -> RegisterType: ...
    @property
    def count(self) -> int: ...
    @property
    def word_order(self) -> WordOrder: ...
    @property
    def scale(self) -> float: ...
    @property
    def scale_factor(self) -> str | None: ...


SCALE_FACTOR_RANGE: Final = range(-10, 11)
"""Valid SunSpec scale factors; anything else decodes as "not implemented"."""

_DECIMAL: Final = Context(prec=40)
_WIDE: Final = frozenset(
    {RegisterType.FLOAT32, RegisterType.INT32, RegisterType.UINT32, RegisterType.ACC32}
)
_FORMATS: Final[dict[RegisterType, str]] = {
    RegisterType.FLOAT32: ">f",
    RegisterType.INT16: ">h",
    RegisterType.UINT16: ">H",
    RegisterType.INT32: ">i",
    RegisterType.UINT32: ">I",
    RegisterType.ACC32: ">I",
    RegisterType.SUNSSF: ">h",
}
_RANGES: Final[dict[RegisterType, range]] = {
    RegisterType.INT16: range(-(2**15), 2**15),
    RegisterType.UINT16: range(2**16),
    RegisterType.INT32: range(-(2**31), 2**31),
    RegisterType.UINT32: range(2**32),
    RegisterType.ACC32: range(2**32),
    RegisterType.SUNSSF: SCALE_FACTOR_RANGE,
}
_MARKERS: Final[dict[RegisterType, int]] = {
    RegisterType.INT16: -(2**15),
    RegisterType.UINT16: 0xFFFF,
    RegisterType.INT32: -(2**31),
    RegisterType.UINT32: 0xFFFFFFFF,
    RegisterType.SUNSSF: -(2**15),
}
"""The unpacked value that means "not implemented"; acc32 has none."""


def register_count(type: RegisterType, length: int | None = None) -> int:  # noqa: A002
    """Return how many registers a value of ``type`` occupies (``length`` for strings)."""
    if type is RegisterType.STRING:
        if length is None or isinstance(length, bool) or length < 1:
            raise RegisterValueError(f"a string register needs a length >= 1, got {length!r}")
        return length
    if length is not None:
        raise RegisterValueError(f"length applies to strings only, not {type.value}")
    return 2 if type in _WIDE else 1


def _pack_registers(regs: Sequence[int], word_order: WordOrder) -> bytes:
    for reg in regs:
        if isinstance(reg, bool) or not isinstance(reg, int) or not 0 <= reg <= 0xFFFF:
            raise RegisterValueError(f"a register holds 0..65535, got {reg!r}")
    if word_order is WordOrder.LITTLE and len(regs) == 2:
        regs = (regs[1], regs[0])
    return struct.pack(f">{len(regs)}H", *regs)


def _unpack_registers(data: bytes, word_order: WordOrder) -> list[int]:
    regs = list(struct.unpack(f">{len(data) // 2}H", data))
    if word_order is WordOrder.LITTLE and len(regs) == 2:
        regs.reverse()
    return regs


def decode_raw(
    regs: Sequence[int],
    type: RegisterType,  # noqa: A002
    word_order: WordOrder = WordOrder.BIG,
) -> float | int | str | None:
    """Decode registers into the unscaled value of ``type``; ``None`` when "not implemented".

    ``None`` comes from float NaN/infinity, the SunSpec markers of int16, uint16,
    int32, uint32 and sunssf (and a scale factor outside -10..10), and a string of
    only NULs. acc32 has no marker. Strings lose trailing NUL/space padding and
    anything after the first NUL; bytes outside ASCII become U+FFFD rather than
    failing the whole read. Raises :class:`RegisterValueError` when the number of
    registers does not match the type or a register is not 0..65535.
    """
    if type is RegisterType.STRING:
        data = _pack_registers(regs, WordOrder.BIG)
        text = data.split(b"\x00", 1)[0].rstrip(b" ").decode("ascii", errors="replace")
        return text or None
    expected = register_count(type)
    if len(regs) != expected:
        raise RegisterValueError(f"{type.value} occupies {expected} registers, got {len(regs)}")
    (value,) = struct.unpack(_FORMATS[type], _pack_registers(regs, word_order))
    if type is RegisterType.FLOAT32:
        return float(value) if math.isfinite(value) else None
    if value == _MARKERS.get(type):
        return None
    if type is RegisterType.SUNSSF and value not in SCALE_FACTOR_RANGE:
        return None
    return int(value)


def encode_raw(
    value: float | str | None,
    type: RegisterType,  # noqa: A002
    word_order: WordOrder = WordOrder.BIG,
    length: int | None = None,
) -> list[int]:
    """Encode an unscaled value of ``type`` into registers (the inverse of :func:`decode_raw`).

    ``None`` encodes the type's "not implemented" marker (NaN for float32, all NULs
    for strings, 0 for acc32, which has no marker). Integer types take ``int`` only
    and accept their full raw range, markers included; sunssf takes -10..10.
    Strings need ``length`` (registers) and are NUL-padded. Raises
    :class:`RegisterValueError` when the value does not fit the type.
    """
    count = register_count(type, length)
    if type is RegisterType.STRING:
        return _encode_string(value, count)
    if value is None:
        value = math.nan if type is RegisterType.FLOAT32 else _MARKERS.get(type, 0)
    if type is RegisterType.FLOAT32:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RegisterValueError(f"float32 takes a number, got {value!r}")
        try:
            data = struct.pack(">f", value)
        except OverflowError:
            raise RegisterValueError(f"{value!r} is out of float32 range") from None
        return _unpack_registers(data, word_order)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RegisterValueError(f"{type.value} takes an int, got {value!r}")
    allowed = _RANGES[type]
    if value not in allowed and value != _MARKERS.get(type):
        raise RegisterValueError(
            f"{value} does not fit {type.value} ({allowed.start}..{allowed.stop - 1})"
        )
    return _unpack_registers(struct.pack(_FORMATS[type], value), word_order)


def _encode_string(value: object, count: int) -> list[int]:
    if value is None:
        return [0] * count
    if not isinstance(value, str):
        raise RegisterValueError(f"a string register takes str, got {value!r}")
    try:
        data = value.encode("ascii")
    except UnicodeEncodeError:
        raise RegisterValueError(f"string {value!r} is not ASCII") from None
    if len(data) > 2 * count:
        raise RegisterValueError(
            f"string {value!r} is {len(data)} bytes; {count} registers hold {2 * count}"
        )
    return _unpack_registers(data.ljust(2 * count, b"\x00"), WordOrder.BIG)


def _multiplier(register: RegisterLike, scale_factor: int | None) -> Decimal | None:
    """Return ``scale * 10**sf`` for ``register`` exactly; ``None`` for a missing scale factor."""
    if register.scale_factor is None:
        if scale_factor is not None:
            raise RegisterValueError(
                f"register {register.name!r} has no scale factor register, got {scale_factor!r}"
            )
        scale_factor = 0
    elif scale_factor is None or scale_factor not in SCALE_FACTOR_RANGE:
        return None
    if not math.isfinite(register.scale) or register.scale == 0:
        raise RegisterValueError(
            f"register {register.name!r} has scale {register.scale!r}; it must be finite, not 0"
        )
    # Decimal keeps 0.001 and 10**-2 exact, so 230 * 0.001 is 0.23 and -1234 * 10**-1 is
    # -123.4, with one correct rounding at the end instead of one per factor.
    return Decimal(repr(register.scale)).scaleb(scale_factor, _DECIMAL)


def decode_register(
    register: RegisterLike,
    regs: Sequence[int],
    scale_factor: int | None = None,
) -> float | int | str | None:
    """Decode a profile register into its physical value (in the register's ``unit``).

    Order: swap words, unpack, scale by ``register.scale * 10**scale_factor``,
    missing → ``None``. ``scale_factor`` is the decoded value of the register's
    ``scale_factor`` register and must be given exactly when it has one; a
    missing (``None``) or out-of-range scale factor makes the value ``None``.
    Integer registers with no scaling stay ``int`` (ids, counters, lengths);
    scaled values are ``float``. Strings and sunssf are returned as decoded.
    """
    raw = decode_raw(regs, register.type, register.word_order)
    multiplier = _multiplier(register, scale_factor)
    if raw is None or isinstance(raw, str) or register.type is RegisterType.SUNSSF:
        return raw
    if multiplier is None:
        return None
    if register.scale_factor is None and register.scale == 1:
        return raw
    return float(_DECIMAL.multiply(Decimal(raw), multiplier))


def encode_register(
    register: RegisterLike,
    value: float | str | None,
    scale_factor: int | None = None,
) -> list[int]:
    """Encode a physical value into a profile register (the inverse of :func:`decode_register`).

    Integer types store ``round(value / (scale * 10**scale_factor))`` (half to even); float32
    stores ``value / (scale * 10**scale_factor)``. ``None`` encodes "not
    implemented". Raises :class:`RegisterValueError` when the value does not fit,
    when a scaled integer would land on the type's "not implemented" marker, and
    when a register that needs a scale factor gets none.
    """
    if register.type is RegisterType.STRING:
        return encode_raw(value, register.type, register.word_order, register.count)
    multiplier = _multiplier(register, scale_factor)
    if value is None or register.type is RegisterType.SUNSSF:
        return encode_raw(value, register.type, register.word_order)
    if multiplier is None:
        raise RegisterValueError(
            f"register {register.name!r} needs a valid scale factor to encode, got {scale_factor!r}"
        )
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RegisterValueError(f"register {register.name!r} takes a number, got {value!r}")
    if not math.isfinite(value):
        if register.type is RegisterType.FLOAT32:
            return encode_raw(value, register.type, register.word_order)
        raise RegisterValueError(f"register {register.name!r} cannot hold {value!r}")
    exact = _DECIMAL.divide(Decimal(repr(value)), multiplier)
    if register.type is RegisterType.FLOAT32:
        scaled = float(exact)
        if not math.isfinite(scaled):
            raise RegisterValueError(f"register {register.name!r}: {value!r} overflows float32")
        return encode_raw(scaled, register.type, register.word_order)
    raw = int(exact.to_integral_value(ROUND_HALF_EVEN, _DECIMAL))
    if raw == _MARKERS.get(register.type):
        raise RegisterValueError(
            f"register {register.name!r}: {value!r} encodes to {register.type.value}'s "
            "'not implemented' marker"
        )
    try:
        return encode_raw(raw, register.type, register.word_order)
    except RegisterValueError as exc:
        raise RegisterValueError(f"register {register.name!r}: {exc}") from None
