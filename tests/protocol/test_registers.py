"""The register codec: published vectors, "not implemented" markers, scaling, round-trips."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segs.protocol.errors import ProtocolError
from segs.protocol.profiles import Register
from segs.protocol.registers import (
    RegisterType,
    RegisterValueError,
    WordOrder,
    decode_raw,
    decode_register,
    encode_raw,
    encode_register,
    register_count,
)

F32 = RegisterType.FLOAT32


def make_register(
    type_: RegisterType = RegisterType.INT16,
    *,
    scale: float = 1.0,
    scale_factor: str | None = None,
    word_order: WordOrder = WordOrder.BIG,
    count: int | None = None,
) -> Register:
    return Register(
        name="x",
        function_code=3,
        address=0,
        type=type_,
        count=count if count is not None else register_count(type_),
        word_order=word_order,
        unit="",
        scale=scale,
        scale_factor=scale_factor,
    )


# --- published vectors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "regs"),
    [(230.0, [0x4366, 0x0000]), (-350.0, [0xC3AF, 0x0000]), (0.98, [0x3F7A, 0xE148])],
)
def test_float32_big_endian_vectors(value: float, regs: list[int]) -> None:
    assert encode_raw(value, F32) == regs
    decoded = decode_raw(regs, F32)
    assert isinstance(decoded, float)
    assert decoded == pytest.approx(value, rel=1e-7)


def test_float32_little_word_order_swaps_words_not_bytes() -> None:
    assert encode_raw(230.0, F32, WordOrder.LITTLE) == [0x0000, 0x4366]
    assert decode_raw([0xE148, 0x3F7A], F32, WordOrder.LITTLE) == pytest.approx(0.98, rel=1e-7)


def test_int32_word_order() -> None:
    assert encode_raw(0x12345678, RegisterType.INT32) == [0x1234, 0x5678]
    assert encode_raw(0x12345678, RegisterType.INT32, WordOrder.LITTLE) == [0x5678, 0x1234]
    assert decode_raw([0xFFFF, 0xFFFE], RegisterType.INT32) == -2


def test_sunspec_int16_with_scale_factor() -> None:
    assert decode_raw([0xFB2E], RegisterType.INT16) == -1234
    register = make_register(RegisterType.INT16, scale_factor="a_sf")
    assert decode_register(register, [0xFB2E], -1) == -123.4
    assert encode_register(register, -123.4, -1) == [0xFB2E]


def test_sunspec_string() -> None:
    assert encode_raw("SunS", RegisterType.STRING, length=2) == [0x5375, 0x6E53]
    assert decode_raw([0x5375, 0x6E53], RegisterType.STRING) == "SunS"


# --- missing values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "regs"),
    [
        (F32, list(struct.unpack(">HH", struct.pack(">f", math.nan)))),
        (F32, list(struct.unpack(">HH", struct.pack(">f", math.inf)))),
        (F32, list(struct.unpack(">HH", struct.pack(">f", -math.inf)))),
        (RegisterType.INT16, [0x8000]),
        (RegisterType.UINT16, [0xFFFF]),
        (RegisterType.SUNSSF, [0x8000]),
        (RegisterType.SUNSSF, [11]),
        (RegisterType.INT32, [0x8000, 0x0000]),
        (RegisterType.UINT32, [0xFFFF, 0xFFFF]),
        (RegisterType.STRING, [0, 0, 0]),
    ],
)
def test_not_implemented_markers_decode_to_none(type_: RegisterType, regs: list[int]) -> None:
    assert decode_raw(regs, type_) is None


def test_acc32_has_no_marker() -> None:
    assert decode_raw([0, 0], RegisterType.ACC32) == 0
    assert decode_raw([0xFFFF, 0xFFFF], RegisterType.ACC32) == 0xFFFFFFFF
    assert encode_raw(None, RegisterType.ACC32) == [0, 0]


@pytest.mark.parametrize("type_", [t for t in RegisterType if t is not RegisterType.ACC32])
def test_none_encodes_the_marker(type_: RegisterType) -> None:
    length = 3 if type_ is RegisterType.STRING else None
    assert decode_raw(encode_raw(None, type_, length=length), type_) is None


def test_string_padding_is_stripped() -> None:
    assert (
        decode_raw(encode_raw("SDM", RegisterType.STRING, length=4), RegisterType.STRING) == "SDM"
    )
    assert decode_raw([0x4142, 0x2020, 0x2020], RegisterType.STRING) == "AB"
    assert decode_raw([0x4142, 0x0043, 0x4400], RegisterType.STRING) == "AB"


def test_non_ascii_string_bytes_do_not_fail_the_read() -> None:
    assert decode_raw([0x41FF], RegisterType.STRING) == "A\ufffd"


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "type_", "length"),
    [
        (32768, RegisterType.INT16, None),
        (-32769, RegisterType.INT16, None),
        (-1, RegisterType.UINT16, None),
        (65536, RegisterType.UINT16, None),
        (2**31, RegisterType.INT32, None),
        (2**32, RegisterType.UINT32, None),
        (-1, RegisterType.ACC32, None),
        (11, RegisterType.SUNSSF, None),
        (1.5, RegisterType.INT16, None),
        (True, RegisterType.UINT16, None),
        ("1", RegisterType.UINT16, None),
        (1e39, F32, None),
        ("x", F32, None),
        ("ABCDE", RegisterType.STRING, 2),
        ("é", RegisterType.STRING, 2),
        (5, RegisterType.STRING, 2),
    ],
)
def test_encode_raw_rejects_values_that_do_not_fit(
    value: object, type_: RegisterType, length: int | None
) -> None:
    with pytest.raises(RegisterValueError) as info:
        encode_raw(value, type_, length=length)  # type: ignore[arg-type]
    assert isinstance(info.value, ProtocolError)
    assert isinstance(info.value, ValueError)


def test_decode_raw_checks_register_count_and_range() -> None:
    with pytest.raises(RegisterValueError, match="2 registers"):
        decode_raw([1], F32)
    with pytest.raises(RegisterValueError, match=r"0\.\.65535"):
        decode_raw([70000], RegisterType.UINT16)


def test_register_count() -> None:
    assert register_count(F32) == 2
    assert register_count(RegisterType.ACC32) == 2
    assert register_count(RegisterType.INT16) == 1
    assert register_count(RegisterType.SUNSSF) == 1
    assert register_count(RegisterType.STRING, 16) == 16
    with pytest.raises(RegisterValueError, match="length"):
        register_count(RegisterType.STRING)
    with pytest.raises(RegisterValueError, match="strings only"):
        register_count(RegisterType.INT16, 2)


# --- physical scaling --------------------------------------------------------------------------


def test_fixed_scale_turns_watts_into_kilowatts() -> None:
    register = make_register(F32, scale=0.001)
    assert decode_register(register, [0x4366, 0x0000]) == 0.23
    assert encode_register(register, 0.23) == [0x4366, 0x0000]


def test_percent_power_factor_with_scale_factor() -> None:
    register = make_register(RegisterType.INT16, scale=0.01, scale_factor="pf_sf")
    assert decode_register(register, [985], -1) == 0.985
    assert encode_register(register, 0.985, -1) == [985]


def test_unscaled_integers_stay_int() -> None:
    assert decode_register(make_register(RegisterType.UINT16), [203]) == 203
    scaled = decode_register(make_register(RegisterType.UINT16, scale=0.5), [203])
    assert isinstance(scaled, float)
    assert scaled == 101.5


@pytest.mark.parametrize("sf", [None, 11, -11])
def test_missing_or_invalid_scale_factor_makes_the_value_missing(sf: int | None) -> None:
    register = make_register(RegisterType.INT16, scale_factor="a_sf")
    assert decode_register(register, [1234], sf) is None
    with pytest.raises(RegisterValueError, match="scale factor"):
        encode_register(register, 12.34, sf)


def test_scale_factor_for_a_register_without_one_is_a_bug() -> None:
    with pytest.raises(RegisterValueError, match="no scale factor register"):
        decode_register(make_register(RegisterType.INT16), [1], -1)


def test_encode_register_refuses_the_marker_and_overflow() -> None:
    register = make_register(RegisterType.INT16, scale_factor="w_sf")
    with pytest.raises(RegisterValueError, match="not implemented"):
        encode_register(register, -32768, 0)
    with pytest.raises(RegisterValueError, match="does not fit"):
        encode_register(register, 40000, 0)
    with pytest.raises(RegisterValueError, match="cannot hold"):
        encode_register(register, math.nan, 0)
    assert encode_register(register, 40000, 1) == [4000]


def test_encode_register_none_is_not_implemented() -> None:
    register = make_register(RegisterType.INT16, scale_factor="w_sf")
    assert decode_register(register, encode_register(register, None, 0), 0) is None


# --- round-trips -------------------------------------------------------------------------------

INT_DOMAINS = {
    RegisterType.INT16: st.integers(-(2**15) + 1, 2**15 - 1),
    RegisterType.UINT16: st.integers(0, 2**16 - 2),
    RegisterType.INT32: st.integers(-(2**31) + 1, 2**31 - 1),
    RegisterType.UINT32: st.integers(0, 2**32 - 2),
    RegisterType.ACC32: st.integers(0, 2**32 - 1),
    RegisterType.SUNSSF: st.integers(-10, 10),
}
word_orders = st.sampled_from(WordOrder)


@given(st.floats(width=32, allow_nan=False, allow_infinity=False), word_orders)
def test_float32_round_trip(value: float, order: WordOrder) -> None:
    assert decode_raw(encode_raw(value, F32, order), F32, order) == value


@given(st.sampled_from(list(INT_DOMAINS)).flatmap(lambda t: st.tuples(st.just(t), INT_DOMAINS[t])))
def test_integer_round_trip(case: tuple[RegisterType, int]) -> None:
    type_, value = case
    for order in WordOrder:
        regs = encode_raw(value, type_, order)
        assert len(regs) == register_count(type_)
        assert all(0 <= reg <= 0xFFFF for reg in regs)
        assert decode_raw(regs, type_, order) == value


@given(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=32)
    .map(str.rstrip)
    .filter(bool),
    st.integers(0, 4),
)
def test_string_round_trip(text: str, spare: int) -> None:
    length = (len(text) + 1) // 2 + spare
    regs = encode_raw(text, RegisterType.STRING, length=length)
    assert len(regs) == length
    assert decode_raw(regs, RegisterType.STRING) == text


@given(
    st.sampled_from([t for t in RegisterType if t is not RegisterType.STRING]).flatmap(
        lambda t: st.tuples(
            st.just(t),
            st.lists(
                st.integers(0, 0xFFFF), min_size=register_count(t), max_size=register_count(t)
            ),
        )
    ),
    word_orders,
)
def test_any_registers_decode_and_re_encode_to_themselves(
    case: tuple[RegisterType, list[int]], order: WordOrder
) -> None:
    type_, regs = case
    value = decode_raw(regs, type_, order)
    if value is not None:
        assert encode_raw(value, type_, order) == regs


@given(
    st.sampled_from(
        [RegisterType.INT16, RegisterType.UINT16, RegisterType.INT32, RegisterType.ACC32]
    ).flatmap(lambda t: st.tuples(st.just(t), INT_DOMAINS[t])),
    st.sampled_from([1.0, 0.001, 0.01, 0.1, 1000.0, -1.0]),
    st.integers(-6, 6),
)
def test_scaled_round_trip_is_exact(case: tuple[RegisterType, int], scale: float, sf: int) -> None:
    type_, raw = case
    register = make_register(type_, scale=scale, scale_factor="sf")
    regs = encode_raw(raw, type_)
    value = decode_register(register, regs, sf)
    assert value is not None
    assert encode_register(register, value, sf) == regs


@given(
    st.floats(width=32, allow_nan=False, allow_infinity=False), st.sampled_from([0.001, 0.1, -1.0])
)
def test_scaled_float32_round_trip(raw: float, scale: float) -> None:
    register = make_register(F32, scale=scale)
    regs = encode_raw(raw, F32)
    value = decode_register(register, regs)
    assert isinstance(value, float)
    assert encode_register(register, value) == regs
