"""Encoding and decoding every message, and every kind of bad input with its reason code."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segs.protocol import (
    SPECS,
    Ack,
    AlertNotice,
    AlertStatus,
    AlertType,
    ConnectionState,
    CounterReset,
    DecodeError,
    EncodeError,
    EventBatch,
    GatewayBirth,
    GatewayState,
    HubState,
    Message,
    MeterInfo,
    MeterOffline,
    MeterOnline,
    OutboxStats,
    PowerSpike,
    QualityFlag,
    Reason,
    RegionalLoad,
    ReloadConfigCommand,
    ResendCommand,
    Severity,
    TariffUpdate,
    TopicKind,
    VoltageOutOfRange,
    Window,
    WindowBatch,
    build_topic,
    decode,
    decode_message,
    encode,
    limits,
)
from segs.protocol.docs import example_text

# ---------------------------------------------------------------- strategies

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@~-]{0,63}", fullmatch=True)
times = st.datetimes(
    min_value=datetime(2000, 1, 1),  # noqa: DTZ001 - hypothesis takes naive bounds
    max_value=datetime(2099, 12, 31),  # noqa: DTZ001
    timezones=st.just(UTC),
)
seqs = st.integers(1, limits.MAX_SEQ)
counts = st.integers(0, limits.MAX_SEQ)
text = st.text(max_size=200)
energy = st.floats(0.0, limits.MAX_ENERGY_KWH, allow_nan=False)
power = st.floats(-limits.MAX_POWER_KW, limits.MAX_POWER_KW, allow_nan=False)
volts = st.floats(0.0, limits.MAX_VOLTAGE_V, allow_nan=False)


@st.composite
def windows(draw: st.DrawFn, meter_id: str | None = None) -> Window:
    seconds = draw(st.sampled_from([1, 2, 5, 10, 15, 30, 60, 300, 900, 3600]))
    epoch = draw(st.integers(946_684_800 // seconds + 1, 4_102_444_799 // seconds - 1))
    low, mid, high = sorted(draw(st.lists(power, min_size=3, max_size=3)))
    expected = draw(st.integers(1, limits.MAX_SAMPLES_PER_WINDOW))
    got = draw(st.integers(1, expected))
    flags = set(draw(st.lists(st.sampled_from(list(QualityFlag)), unique=True)))
    flags.discard(QualityFlag.PARTIAL)
    if got < expected:
        flags.add(QualityFlag.PARTIAL)
    return Window(
        meter_id=meter_id or draw(ids),
        window_start=datetime.fromtimestamp(epoch * seconds, UTC),
        window_seconds=seconds,
        import_kwh=draw(energy),
        export_kwh=draw(energy),
        import_delta_kwh=draw(energy),
        export_delta_kwh=draw(energy),
        power_min_kw=low,
        power_avg_kw=mid,
        power_max_kw=high,
        voltage_avg_v=draw(st.none() | volts),
        current_avg_a=draw(st.none() | st.floats(0.0, limits.MAX_CURRENT_A)),
        power_factor_avg=draw(st.none() | st.floats(-1.0, 1.0)),
        frequency_avg_hz=draw(st.none() | st.floats(40.0, 70.0)),
        samples_got=got,
        samples_expected=expected,
        quality=tuple(sorted(flags)),
    )


@st.composite
def window_batches(draw: st.DrawFn) -> WindowBatch:
    meters = draw(st.lists(ids, min_size=1, max_size=5, unique=True))
    return WindowBatch(
        gateway_id=draw(ids),
        seq=draw(seqs),
        sent_at=draw(times),
        historical=draw(st.booleans()),
        windows=tuple(draw(windows(meter_id=m)) for m in meters),
    )


events = st.one_of(
    st.builds(
        PowerSpike,
        meter_id=ids,
        at=times,
        power_kw=power,
        baseline_kw=power,
        ratio=st.floats(0, 1e6),
    ),
    st.builds(
        VoltageOutOfRange,
        meter_id=ids,
        at=times,
        voltage_v=volts,
        nominal_v=volts,
        phase=st.none() | st.integers(1, 3),
    ),
    st.builds(MeterOffline, meter_id=ids, at=times, error=text),
    st.builds(MeterOnline, meter_id=ids, at=times, offline_seconds=st.none() | st.floats(0, 1e10)),
    st.builds(
        CounterReset,
        meter_id=ids,
        at=times,
        previous_import_kwh=energy,
        import_kwh=energy,
        previous_export_kwh=energy,
        export_kwh=energy,
    ),
)
outbox = st.builds(
    OutboxStats,
    pending_batches=counts,
    pending_bytes=counts,
    dropped_batches=counts,
    dropped_windows=counts,
    oldest_pending_age_s=st.none() | st.floats(0, 1e10),
)


@st.composite
def births(draw: st.DrawFn) -> GatewayBirth:
    meters = draw(st.lists(ids, max_size=5, unique=True))
    return GatewayBirth(
        gateway_id=draw(ids),
        region=draw(ids),
        agent_version=draw(st.from_regex(r"[\x21-\x7e]{1,64}", fullmatch=True)),
        started_at=draw(times),
        window_seconds=draw(st.sampled_from([5, 60, 900])),
        poll_interval_s=draw(st.floats(0.01, 3600)),
        config_hash=draw(st.from_regex(r"[0-9a-f]{8,64}", fullmatch=True)),
        meters=tuple(
            MeterInfo(
                meter_id=m, profile=draw(ids), bus=draw(ids), unit_id=draw(st.integers(0, 247))
            )
            for m in meters
        ),
        outbox=draw(outbox),
    )


@st.composite
def regional_loads(draw: st.DrawFn) -> RegionalLoad:
    capacity = draw(st.floats(1.0, 1e6))
    total = draw(st.floats(-capacity, capacity))
    meters_total = draw(st.integers(0, 100_000))
    minute = draw(times).replace(second=0, microsecond=0)
    return RegionalLoad(
        region=draw(ids),
        minute=minute,
        total_kw=total,
        meters_reporting=draw(st.integers(0, meters_total)),
        meters_total=meters_total,
        capacity_kw=capacity,
        load_factor=total / capacity,
    )


@st.composite
def acks(draw: st.DrawFn) -> Ack:
    committed = tuple(draw(st.lists(seqs, max_size=50)))
    rejected = tuple(draw(st.lists(seqs, min_size=0 if committed else 1, max_size=5)))
    return Ack(gateway_id=draw(ids), seqs=committed, rejected=rejected, acked_at=draw(times))


@st.composite
def resends(draw: st.DrawFn) -> ResendCommand:
    low, high = sorted(draw(st.lists(seqs, min_size=2, max_size=2)))
    return ResendCommand(command_id=draw(ids), issued_at=draw(times), from_seq=low, to_seq=high)


messages: st.SearchStrategy[Message] = st.one_of(
    window_batches(),
    st.builds(
        EventBatch,
        gateway_id=ids,
        seq=seqs,
        sent_at=times,
        events=st.lists(events, min_size=1, max_size=5).map(tuple),
    ),
    births(),
    st.builds(
        GatewayState,
        gateway_id=ids,
        state=st.sampled_from(ConnectionState),
        at=st.none() | times,
        outbox=st.none() | outbox,
    ),
    acks(),
    resends(),
    st.builds(ReloadConfigCommand, command_id=ids, issued_at=times),
    st.builds(HubState, hub_id=ids, state=st.sampled_from(ConnectionState), at=st.none() | times),
    regional_loads(),
    st.builds(
        TariffUpdate,
        region=ids,
        rate_per_kwh=st.floats(0, 1e4),
        currency=st.from_regex(r"[A-Z]{3}", fullmatch=True),
        band=ids,
        regional_load_factor=st.none() | st.floats(-100, 100),
        is_override=st.booleans(),
        reason=st.none() | text,
        effective_from=times,
        updated_at=times,
    ),
    st.builds(
        AlertNotice,
        alert_id=ids,
        alert_type=st.sampled_from(AlertType),
        severity=st.sampled_from(Severity),
        status=st.sampled_from(AlertStatus),
        previous_status=st.none() | st.sampled_from(AlertStatus),
        region=ids,
        meter_id=st.none() | ids,
        gateway_id=st.none() | ids,
        message=text,
        metadata=st.dictionaries(
            st.text(max_size=64),
            st.integers(-(2**53), 2**53)
            | st.floats(-1e9, 1e9)
            | st.text(max_size=50)
            | st.booleans(),
            max_size=32,
        ),
        created_at=times,
        updated_at=times,
        acknowledged_by=st.none() | ids,
        resolution_note=st.none() | text,
    ),
)

_KIND_OF = {
    WindowBatch: TopicKind.WINDOWS,
    EventBatch: TopicKind.EVENTS,
    GatewayBirth: TopicKind.GATEWAY_BIRTH,
    GatewayState: TopicKind.GATEWAY_STATE,
    Ack: TopicKind.ACK,
    ResendCommand: TopicKind.COMMAND,
    ReloadConfigCommand: TopicKind.COMMAND,
    HubState: TopicKind.HUB_STATE,
    RegionalLoad: TopicKind.LIVE_REGION_LOAD,
    TariffUpdate: TopicKind.LIVE_TARIFF,
    AlertNotice: TopicKind.LIVE_ALERT,
}


def _topic_for(message: Message) -> str:
    kind = _KIND_OF[type(message)]
    return build_topic(
        kind,
        gateway_id=getattr(message, "gateway_id", None) or "gw-1",
        region=getattr(message, "region", None),
    )


# ---------------------------------------------------------------- round trips


@settings(max_examples=300)
@given(message=messages)
def test_every_message_round_trips(message: Message) -> None:
    data = encode(message)
    assert decode(data, type(message)) == message
    decoded = decode_message(_topic_for(message), data)
    assert decoded.payload == message
    assert decoded.topic.kind == _KIND_OF[type(message)]


def test_every_message_type_has_a_strategy_and_a_topic() -> None:
    variants = {
        t
        for spec in SPECS.values()
        for t in getattr(getattr(spec.payload, "__origin__", None), "__args__", (spec.payload,))
    }
    assert variants == set(_KIND_OF)


def test_encoding_is_compact_utf8_json_without_absent_fields() -> None:
    state = GatewayState(gateway_id="gw-1", state=ConnectionState.OFFLINE)
    assert encode(state) == b'{"v":1,"gateway_id":"gw-1","state":"offline"}'


def test_a_valid_batch_too_large_for_the_wire_cannot_be_encoded() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    window = Window(
        meter_id="M" * 64,
        window_start=start,
        window_seconds=60,
        import_kwh=123456.789012,
        export_kwh=23456.789012,
        import_delta_kwh=0.123456789,
        export_delta_kwh=0.0123456789,
        power_min_kw=-1.23456789,
        power_avg_kw=1.23456789,
        power_max_kw=9.87654321,
        voltage_avg_v=231.123456,
        current_avg_a=12.3456789,
        power_factor_avg=0.987654321,
        frequency_avg_hz=49.987654321,
        samples_got=59,
        samples_expected=60,
        quality=tuple(QualityFlag),
    )
    batch = WindowBatch(
        gateway_id="gw-1",
        seq=1,
        sent_at=start,
        historical=True,
        windows=tuple(
            window.model_copy(update={"window_start": start + timedelta(minutes=i)})
            for i in range(limits.MAX_WINDOWS_PER_BATCH)
        ),
    )
    with pytest.raises(EncodeError, match="limit is 1048576"):
        encode(batch)
    half = batch.model_copy(update={"windows": batch.windows[: limits.MAX_WINDOWS_PER_BATCH // 2]})
    assert decode(encode(half), WindowBatch) == half


# ---------------------------------------------------------------- bad input


def _example(kind: TopicKind) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(example_text(SPECS[kind]))
    return loaded


def _windows_with(**changes: Any) -> bytes:
    payload = _example(TopicKind.WINDOWS)
    payload["windows"][0].update(changes)
    return json.dumps(payload).encode()


def _batch_with(**changes: Any) -> bytes:
    payload = _example(TopicKind.WINDOWS)
    payload.update(changes)
    return json.dumps(payload).encode()


def _without(field: str) -> bytes:
    payload = _example(TopicKind.WINDOWS)
    del payload[field]
    return json.dumps(payload).encode()


def _window_without(field: str) -> bytes:
    payload = _example(TopicKind.WINDOWS)
    del payload["windows"][0][field]
    return json.dumps(payload).encode()


WINDOWS = "segs/v1/gw/gw-pune-west-01/windows"
EVENTS = "segs/v1/gw/gw-pune-west-01/events"
START = "2026-11-27T10:00:00Z"

BAD = {
    # wrong types
    "seq as string": (WINDOWS, _batch_with(seq="1042"), Reason.WRONG_TYPE),
    "historical as int": (WINDOWS, _batch_with(historical=1), Reason.WRONG_TYPE),
    "power as string": (WINDOWS, _windows_with(power_avg_kw="3.5"), Reason.WRONG_TYPE),
    "samples as float": (WINDOWS, _windows_with(samples_got=60.0), Reason.WRONG_TYPE),
    "windows as object": (WINDOWS, _batch_with(windows={}), Reason.WRONG_TYPE),
    "window as list": (WINDOWS, _batch_with(windows=[[1]]), Reason.WRONG_TYPE),
    "time as number": (WINDOWS, _batch_with(sent_at=1_700_000_000), Reason.WRONG_TYPE),
    # NaN and infinity (Python's json writes them; JSON does not allow them)
    "NaN power": (WINDOWS, _windows_with(power_avg_kw=float("nan")), Reason.NOT_FINITE),
    "infinite energy": (WINDOWS, _windows_with(import_kwh=float("inf")), Reason.NOT_FINITE),
    "-infinite voltage": (WINDOWS, _windows_with(voltage_avg_v=float("-inf")), Reason.NOT_FINITE),
    # physically impossible values
    "voltage 5 kV": (WINDOWS, _windows_with(voltage_avg_v=5000.0), Reason.OUT_OF_RANGE),
    "negative voltage": (WINDOWS, _windows_with(voltage_avg_v=-1.0), Reason.OUT_OF_RANGE),
    "power factor 1.5": (WINDOWS, _windows_with(power_factor_avg=1.5), Reason.OUT_OF_RANGE),
    "frequency 10 Hz": (WINDOWS, _windows_with(frequency_avg_hz=10.0), Reason.OUT_OF_RANGE),
    "negative counter": (WINDOWS, _windows_with(import_kwh=-0.1), Reason.OUT_OF_RANGE),
    "negative delta": (WINDOWS, _windows_with(import_delta_kwh=-0.1), Reason.OUT_OF_RANGE),
    "power 20 MW": (WINDOWS, _windows_with(power_max_kw=20_000.0), Reason.OUT_OF_RANGE),
    "seq zero": (WINDOWS, _batch_with(seq=0), Reason.OUT_OF_RANGE),
    "seq beyond bigint": (WINDOWS, _batch_with(seq=2**63), Reason.OUT_OF_RANGE),
    "window 7 s": (WINDOWS, _windows_with(window_seconds=7), Reason.OUT_OF_RANGE),
    "empty batch": (WINDOWS, _batch_with(windows=[]), Reason.OUT_OF_RANGE),
    "unknown quality flag": (WINDOWS, _windows_with(quality=["shiny"]), Reason.OUT_OF_RANGE),
    # times
    "naive time": (WINDOWS, _batch_with(sent_at="2026-11-27T10:01:01"), Reason.INVALID_TIME),
    "local time": (WINDOWS, _batch_with(sent_at="2026-11-27T15:31:01+05:30"), Reason.INVALID_TIME),
    "year 1970": (WINDOWS, _batch_with(sent_at="1970-01-01T00:00:00Z"), Reason.INVALID_TIME),
    "not a time": (WINDOWS, _batch_with(sent_at="yesterday"), Reason.INVALID_TIME),
    # ids
    "wildcard in id": (WINDOWS, _windows_with(meter_id="MTR+1"), Reason.INVALID_ID),
    "space in id": (WINDOWS, _windows_with(meter_id="MTR 1"), Reason.INVALID_ID),
    "long id": (WINDOWS, _windows_with(meter_id="M" * 65), Reason.INVALID_ID),
    # contradictions
    "min above max": (WINDOWS, _windows_with(power_min_kw=5.0), Reason.INCONSISTENT),
    "more samples than expected": (WINDOWS, _windows_with(samples_got=61), Reason.INCONSISTENT),
    "unflagged partial": (WINDOWS, _windows_with(samples_got=59), Reason.INCONSISTENT),
    "misaligned window": (
        WINDOWS,
        _windows_with(window_start="2026-11-27T10:00:30Z"),
        Reason.INCONSISTENT,
    ),
    "duplicate window": (
        WINDOWS,
        _batch_with(windows=[_example(TopicKind.WINDOWS)["windows"][0]] * 2),
        Reason.INCONSISTENT,
    ),
    # missing and extra fields
    "missing seq": (WINDOWS, _without("seq"), Reason.MISSING_FIELD),
    "missing version": (WINDOWS, _without("v"), Reason.MISSING_FIELD),
    "missing counter": (WINDOWS, _window_without("import_kwh"), Reason.MISSING_FIELD),
    "extra field": (WINDOWS, _batch_with(priority="high"), Reason.EXTRA_FIELD),
    "extra window field": (WINDOWS, _windows_with(temperature_c=21.5), Reason.EXTRA_FIELD),
    "missing event kind": (
        EVENTS,
        json.dumps({**_example(TopicKind.EVENTS), "events": [{"meter_id": "m1"}]}).encode(),
        Reason.MISSING_FIELD,
    ),
    "unknown event kind": (
        EVENTS,
        json.dumps(
            {
                **_example(TopicKind.EVENTS),
                "events": [{**_example(TopicKind.EVENTS)["events"][0], "kind": "fire"}],
            }
        ).encode(),
        Reason.OUT_OF_RANGE,
    ),
    # versions
    "version 2": (WINDOWS, _batch_with(v=2), Reason.UNSUPPORTED_VERSION),
    "version 2 with other fields": (
        WINDOWS,
        json.dumps({"v": 2, "gateway": "x", "batch": []}).encode(),
        Reason.UNSUPPORTED_VERSION,
    ),
    "version as string": (WINDOWS, _batch_with(v="1"), Reason.UNSUPPORTED_VERSION),
    # bytes and JSON
    "malformed JSON": (WINDOWS, b'{"v": 1, "seq": ', Reason.MALFORMED_JSON),
    "trailing garbage": (WINDOWS, _batch_with() + b"}", Reason.MALFORMED_JSON),
    "empty payload": (WINDOWS, b"", Reason.MALFORMED_JSON),
    "not UTF-8": (WINDOWS, b'{"v": 1, "gateway_id": "gw\xff"}', Reason.NOT_UTF8),
    "UTF-16": (WINDOWS, _batch_with().decode().encode("utf-16"), Reason.NOT_UTF8),
    "deeply nested": (WINDOWS, b"[" * 100_000 + b"]" * 100_000, Reason.MALFORMED_JSON),
    "deeply nested field": (
        WINDOWS,
        b'{"v": 1, "seq": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        Reason.MALFORMED_JSON,
    ),
    "array": (WINDOWS, b"[1, 2]", Reason.NOT_AN_OBJECT),
    "string": (WINDOWS, b'"windows"', Reason.NOT_AN_OBJECT),
    "oversized": (WINDOWS, b" " * (limits.MAX_PAYLOAD_BYTES + 1), Reason.TOO_LARGE),
    "too many events": (
        EVENTS,
        json.dumps(
            {
                **_example(TopicKind.EVENTS),
                "events": _example(TopicKind.EVENTS)["events"][:1]
                * (limits.MAX_EVENTS_PER_BATCH + 1),
            }
        ).encode(),
        Reason.TOO_MANY_ITEMS,
    ),
    # topics
    "foreign topic": ("other/v1/gw/gw-pune-west-01/windows", _batch_with(), Reason.UNKNOWN_TOPIC),
    "wildcard topic": ("segs/v1/gw/+/windows", _batch_with(), Reason.UNKNOWN_TOPIC),
    "window batch on the ack topic": (
        "segs/v1/gw/gw-pune-west-01/ack",
        _batch_with(),
        Reason.MISSING_FIELD,
    ),
    "another gateway's topic": (
        "segs/v1/gw/gw-pune-east-01/windows",
        _batch_with(),
        Reason.ID_MISMATCH,
    ),
    "another region's tariff": (
        "segs/v1/live/tariffs/Pune-East",
        json.dumps(_example(TopicKind.LIVE_TARIFF)).encode(),
        Reason.ID_MISMATCH,
    ),
}


@pytest.mark.parametrize(("topic", "data", "reason"), BAD.values(), ids=BAD.keys())
def test_bad_input_is_rejected_with_its_reason(topic: str, data: bytes, reason: Reason) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_message(topic, data)
    assert caught.value.reason == reason, caught.value.message
    assert caught.value.message
    assert reason.value in str(caught.value)


def test_every_reason_code_is_exercised() -> None:
    assert {reason for _, _, reason in BAD.values()} == set(Reason) - {Reason.INVALID_VALUE}


def test_a_batch_at_the_window_limit_decodes_and_one_more_is_refused() -> None:
    window = _example(TopicKind.WINDOWS)["windows"][0]
    start = datetime(2026, 11, 27, tzinfo=UTC)

    def batch(n: int) -> bytes:
        items = [
            {
                **window,
                "window_start": (start + timedelta(minutes=i)).isoformat().replace("+00:00", "Z"),
            }
            for i in range(n)
        ]
        return _batch_with(windows=items).replace(b" ", b"")

    full = batch(limits.MAX_WINDOWS_PER_BATCH)
    assert len(full) <= limits.MAX_PAYLOAD_BYTES
    decoded = decode(full, WindowBatch)
    assert len(decoded.windows) == limits.MAX_WINDOWS_PER_BATCH
    with pytest.raises(DecodeError) as caught:
        decode(batch(limits.MAX_WINDOWS_PER_BATCH + 1), WindowBatch)
    assert caught.value.reason == Reason.TOO_MANY_ITEMS


def test_decode_rejects_a_valid_payload_of_another_type() -> None:
    with pytest.raises(DecodeError) as caught:
        decode(example_text(SPECS[TopicKind.ACK]).encode(), WindowBatch)
    assert caught.value.reason == Reason.MISSING_FIELD
