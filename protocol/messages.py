"""Payload models: every message that crosses MQTT, with units in the field names.

Models are strict (no type coercion), forbid unknown fields, reject NaN and
infinity, and bound every number, string and list. Units: power in kW (import
positive, export negative), energy in kWh, voltage in V, current in A,
frequency in Hz, power factor as a ratio in [-1, 1], durations in seconds.
Times are UTC on the wire (RFC 3339 with ``Z``).
"""

from __future__ import annotations

import math
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Final, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from segs.protocol import limits
from segs.protocol.ids import GatewayId, Id, MeterId, RegionId


def _utc(value: datetime) -> datetime:
    offset = value.utcoffset()
    if offset is None:
        raise PydanticCustomError("invalid_time", "timestamp has no timezone; SEGS sends UTC")
    if offset.total_seconds() != 0:
        raise PydanticCustomError(
            "invalid_time", "timestamp is not UTC (offset {offset})", {"offset": str(offset)}
        )
    if not limits.MIN_TIME <= value < limits.MAX_TIME:
        raise PydanticCustomError(
            "invalid_time",
            "timestamp {value} is outside {lo} .. {hi}",
            {"value": value.isoformat(), "lo": limits.MIN_TIME.year, "hi": limits.MAX_TIME.year},
        )
    return value


UtcTime = Annotated[datetime, AfterValidator(_utc)]
"""A timezone-aware UTC timestamp between ``limits.MIN_TIME`` and ``limits.MAX_TIME``."""

Seq = Annotated[int, Field(ge=1, le=limits.MAX_SEQ)]
"""A gateway sequence number: positive, monotonic per gateway across restarts."""

Text = Annotated[str, Field(max_length=limits.MAX_TEXT_LENGTH)]
"""Free text for people (error messages, reasons)."""

EnergyKwh = Annotated[float, Field(ge=0.0, le=limits.MAX_ENERGY_KWH)]
PowerKw = Annotated[float, Field(ge=-limits.MAX_POWER_KW, le=limits.MAX_POWER_KW)]
VoltageV = Annotated[float, Field(ge=0.0, le=limits.MAX_VOLTAGE_V)]
CurrentA = Annotated[float, Field(ge=0.0, le=limits.MAX_CURRENT_A)]
FrequencyHz = Annotated[float, Field(ge=limits.MIN_FREQUENCY_HZ, le=limits.MAX_FREQUENCY_HZ)]
PowerFactor = Annotated[float, Field(ge=-1.0, le=1.0)]
NonNegative = Annotated[int, Field(ge=0, le=limits.MAX_SEQ)]


class _Model(BaseModel):
    model_config = ConfigDict(
        strict=True, extra="forbid", frozen=True, allow_inf_nan=False, use_enum_values=False
    )


class Message(_Model):
    """Base of every top-level payload: carries the protocol version ``v``."""

    v: Literal[1] = Field(default=limits.PROTOCOL_VERSION, description="protocol version")


# --------------------------------------------------------------------- enums


class ConnectionState(StrEnum):
    """Retained presence of a gateway or the hub."""

    ONLINE = "online"
    OFFLINE = "offline"


class QualityFlag(StrEnum):
    """What was unusual about a window."""

    PARTIAL = "partial"
    """Fewer valid samples than expected (``samples_got < samples_expected``)."""
    METER_OFFLINE = "meter_offline"
    """The meter did not answer for part of the window."""
    INVALID_VALUES_DROPPED = "invalid_values_dropped"
    """Samples with NaN or impossible values were dropped."""
    COUNTER_RESET = "counter_reset"
    """An energy counter went backwards (meter replaced); deltas exclude the jump."""


class EventKind(StrEnum):
    """Immediate meter events, sent without waiting for the window to close."""

    POWER_SPIKE = "power_spike"
    VOLTAGE_OUT_OF_RANGE = "voltage_out_of_range"
    METER_OFFLINE = "meter_offline"
    METER_ONLINE = "meter_online"
    COUNTER_RESET = "counter_reset"


class CommandKind(StrEnum):
    """Commands the hub sends to a gateway."""

    RESEND = "resend"
    RELOAD_CONFIG = "reload_config"


class AlertType(StrEnum):
    """Kinds of alert the hub raises. One spelling, lower case, everywhere."""

    POWER_SPIKE = "power_spike"
    OVER_VOLTAGE = "over_voltage"
    UNDER_VOLTAGE = "under_voltage"
    METER_OFFLINE = "meter_offline"
    GATEWAY_OFFLINE = "gateway_offline"
    REGIONAL_OVERLOAD = "regional_overload"
    COUNTER_RESET = "counter_reset"
    TAMPER = "tamper"
    DATA_GAP = "data_gap"


class Severity(StrEnum):
    """Alert severity, lowest first."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class AlertStatus(StrEnum):
    """Alert lifecycle: active → acknowledged → resolved (or active → resolved)."""

    ACTIVE = "active"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


# ------------------------------------------------------------------- windows

_REL_TOLERANCE: Final = 1e-9


class Window(_Model):
    """One meter's readings reduced over one UTC-aligned window."""

    meter_id: MeterId = Field(description="the meter")
    window_start: UtcTime = Field(
        description="start of the window (UTC), a multiple of window_seconds since the epoch"
    )
    window_seconds: int = Field(
        ge=1, le=limits.MAX_WINDOW_SECONDS, description="window length in s; divides 86400"
    )
    import_kwh: EnergyKwh = Field(description="cumulative import energy counter at window end, kWh")
    export_kwh: EnergyKwh = Field(description="cumulative export energy counter at window end, kWh")
    import_delta_kwh: EnergyKwh = Field(description="import energy during the window, kWh")
    export_delta_kwh: EnergyKwh = Field(description="export energy during the window, kWh")
    power_min_kw: PowerKw = Field(description="lowest active power sample, kW (export < 0)")
    power_avg_kw: PowerKw = Field(description="mean active power over the samples, kW")
    power_max_kw: PowerKw = Field(description="highest active power sample, kW")
    voltage_avg_v: VoltageV | None = Field(
        default=None, description="mean line-to-neutral voltage over phases and samples, V"
    )
    current_avg_a: CurrentA | None = Field(
        default=None, description="mean current over phases and samples, A"
    )
    power_factor_avg: PowerFactor | None = Field(
        default=None, description="mean total power factor (ratio, -1..1)"
    )
    frequency_avg_hz: FrequencyHz | None = Field(default=None, description="mean frequency, Hz")
    samples_got: int = Field(
        ge=1, le=limits.MAX_SAMPLES_PER_WINDOW, description="valid samples in the window"
    )
    samples_expected: int = Field(
        ge=1, le=limits.MAX_SAMPLES_PER_WINDOW, description="samples the poll interval allows"
    )
    quality: tuple[QualityFlag, ...] = Field(
        default=(), max_length=len(QualityFlag), description="quality flags, each at most once"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if 86_400 % self.window_seconds:
            raise PydanticCustomError(
                "out_of_range",
                "window_seconds {s} does not divide a day",
                {"s": self.window_seconds},
            )
        if (
            int(self.window_start.timestamp()) % self.window_seconds
            or self.window_start.microsecond
        ):
            raise PydanticCustomError(
                "inconsistent",
                "window_start {t} is not aligned to {s} s",
                {"t": self.window_start.isoformat(), "s": self.window_seconds},
            )
        slack = _REL_TOLERANCE * max(1.0, abs(self.power_min_kw), abs(self.power_max_kw))
        if not (self.power_min_kw - slack <= self.power_avg_kw <= self.power_max_kw + slack):
            raise PydanticCustomError("inconsistent", "power must satisfy min <= avg <= max (kW)")
        if self.samples_got > self.samples_expected:
            raise PydanticCustomError("inconsistent", "samples_got exceeds samples_expected")
        if len(set(self.quality)) != len(self.quality):
            raise PydanticCustomError("inconsistent", "a quality flag is repeated")
        partial = QualityFlag.PARTIAL in self.quality
        if partial != (self.samples_got < self.samples_expected):
            raise PydanticCustomError(
                "inconsistent",
                "the partial flag is set exactly when samples_got < samples_expected",
            )
        return self


class WindowBatch(Message):
    """``windows``: a batch of windows from one gateway, acknowledged by seq."""

    gateway_id: GatewayId = Field(description="the sending gateway; equals the topic's id")
    seq: Seq = Field(description="gateway sequence number, monotonic across restarts")
    sent_at: UtcTime = Field(description="when the batch was (re)sent, UTC")
    historical: bool = Field(description="true when the batch comes from the outbox backlog")
    windows: tuple[Window, ...] = Field(
        min_length=1, max_length=limits.MAX_WINDOWS_PER_BATCH, description="the windows"
    )

    @model_validator(mode="after")
    def _unique(self) -> Self:
        keys = {(w.meter_id, w.window_start) for w in self.windows}
        if len(keys) != len(self.windows):
            raise PydanticCustomError(
                "inconsistent", "a (meter_id, window_start) appears twice in the batch"
            )
        return self


# -------------------------------------------------------------------- events


class _Event(_Model):
    meter_id: MeterId = Field(description="the meter")
    at: UtcTime = Field(description="when the edge observed it, UTC")


class PowerSpike(_Event):
    """A sample far above the meter's rolling baseline."""

    kind: Literal[EventKind.POWER_SPIKE] = EventKind.POWER_SPIKE
    power_kw: PowerKw = Field(description="the sample's active power, kW")
    baseline_kw: PowerKw = Field(description="the rolling baseline it was compared with, kW")
    ratio: float = Field(ge=0.0, le=1e6, description="power / baseline")


class VoltageOutOfRange(_Event):
    """A phase voltage outside nominal ±10 % (EN 50160)."""

    kind: Literal[EventKind.VOLTAGE_OUT_OF_RANGE] = EventKind.VOLTAGE_OUT_OF_RANGE
    voltage_v: VoltageV = Field(description="the measured voltage, V")
    nominal_v: VoltageV = Field(description="the nominal voltage, V")
    phase: int | None = Field(default=None, ge=1, le=3, description="phase 1..3, if known")


class MeterOffline(_Event):
    """The meter stopped answering after retries."""

    kind: Literal[EventKind.METER_OFFLINE] = EventKind.METER_OFFLINE
    error: Text = Field(description="the last error, for people")


class MeterOnline(_Event):
    """The meter answers again (also sent for a meter's first good read)."""

    kind: Literal[EventKind.METER_ONLINE] = EventKind.METER_ONLINE
    offline_seconds: float | None = Field(
        default=None, ge=0.0, le=1e10, description="how long it was offline, s; absent at start"
    )


class CounterReset(_Event):
    """An energy counter went backwards: the meter was replaced or reset."""

    kind: Literal[EventKind.COUNTER_RESET] = EventKind.COUNTER_RESET
    previous_import_kwh: EnergyKwh = Field(description="import counter before the reset, kWh")
    import_kwh: EnergyKwh = Field(description="import counter after the reset, kWh")
    previous_export_kwh: EnergyKwh = Field(description="export counter before the reset, kWh")
    export_kwh: EnergyKwh = Field(description="export counter after the reset, kWh")


MeterEvent = Annotated[
    PowerSpike | VoltageOutOfRange | MeterOffline | MeterOnline | CounterReset,
    Field(discriminator="kind"),
]
"""Any meter event; ``kind`` says which."""


class EventBatch(Message):
    """``events``: meter events, sent immediately and acknowledged by seq like windows."""

    gateway_id: GatewayId = Field(description="the sending gateway; equals the topic's id")
    seq: Seq = Field(description="gateway sequence number, shared with window batches")
    sent_at: UtcTime = Field(description="when the batch was (re)sent, UTC")
    events: tuple[MeterEvent, ...] = Field(
        min_length=1, max_length=limits.MAX_EVENTS_PER_BATCH, description="the events"
    )


# ------------------------------------------------------------ gateway status


class OutboxStats(_Model):
    """The state of a gateway's store-and-forward outbox."""

    pending_batches: NonNegative = Field(description="batches waiting for a hub ack")
    pending_bytes: NonNegative = Field(description="their encoded size, bytes")
    dropped_batches: NonNegative = Field(description="batches dropped because the outbox was full")
    dropped_windows: NonNegative = Field(description="windows in those dropped batches")
    oldest_pending_age_s: float | None = Field(
        default=None, ge=0.0, le=1e10, description="age of the oldest pending batch, s"
    )


class MeterInfo(_Model):
    """A meter as configured on a gateway."""

    meter_id: MeterId = Field(description="the meter")
    profile: Id = Field(description="device profile id (sdm630, sdm120, sunspec203, ...)")
    bus: Id = Field(description="the gateway's name of the bus the meter is on")
    unit_id: int = Field(ge=0, le=247, description="Modbus unit id")


class GatewayBirth(Message):
    """``birth`` (retained): who the gateway is and what it reads."""

    gateway_id: GatewayId = Field(description="the gateway; equals the topic's id")
    region: RegionId = Field(description="the region the gateway's meters belong to")
    agent_version: str = Field(
        pattern=r"^[\x21-\x7e]{1,64}$", description="edge agent version (printable ASCII)"
    )
    started_at: UtcTime = Field(description="when the agent process started, UTC")
    window_seconds: int = Field(ge=1, le=limits.MAX_WINDOW_SECONDS, description="window length, s")
    poll_interval_s: float = Field(ge=0.01, le=3600.0, description="meter poll interval, s")
    config_hash: str = Field(
        pattern=r"^[0-9a-f]{8,64}$", description="hash of the effective config (hex)"
    )
    meters: tuple[MeterInfo, ...] = Field(
        max_length=limits.MAX_METERS_PER_GATEWAY, description="configured meters"
    )
    outbox: OutboxStats = Field(description="outbox state at connect time")

    @model_validator(mode="after")
    def _unique_meters(self) -> Self:
        if len({m.meter_id for m in self.meters}) != len(self.meters):
            raise PydanticCustomError("inconsistent", "a meter_id is listed twice")
        return self


class GatewayState(Message):
    """``state`` (retained): ``online`` on connect, ``offline`` as the MQTT will."""

    gateway_id: GatewayId = Field(description="the gateway; equals the topic's id")
    state: ConnectionState = Field(description="online or offline")
    at: UtcTime | None = Field(
        default=None, description="when the state was declared, UTC; absent in the will"
    )
    outbox: OutboxStats | None = Field(default=None, description="outbox state, when known")


# ------------------------------------------------------------------ hub → edge


class Ack(Message):
    """``ack``: the seqs the hub has durably handled; the edge then deletes them.

    ``seqs`` were committed to storage; ``rejected`` were stored as dead letters
    (undecodable or refused) and will never be accepted, so the edge drops them
    too and logs an error.
    """

    gateway_id: GatewayId = Field(description="the gateway; equals the topic's id")
    seqs: tuple[Seq, ...] = Field(max_length=limits.MAX_SEQS_PER_ACK, description="committed seqs")
    rejected: tuple[Seq, ...] = Field(
        default=(), max_length=limits.MAX_SEQS_PER_ACK, description="dead-lettered seqs"
    )
    acked_at: UtcTime = Field(description="when the hub committed them, UTC")

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if not self.seqs and not self.rejected:
            raise PydanticCustomError("inconsistent", "an ack names at least one seq")
        return self


class _Command(Message):
    command_id: Id = Field(description="unique id of this command, for logs and replies")
    issued_at: UtcTime = Field(description="when the hub issued it, UTC")


class ResendCommand(_Command):
    """Ask the gateway to resend the batches with seqs in ``[from_seq, to_seq]`` it still holds."""

    command: Literal[CommandKind.RESEND] = CommandKind.RESEND
    from_seq: Seq = Field(description="first seq to resend")
    to_seq: Seq = Field(description="last seq to resend (inclusive)")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.from_seq > self.to_seq:
            raise PydanticCustomError("inconsistent", "from_seq is after to_seq")
        return self


class ReloadConfigCommand(_Command):
    """Ask the gateway to re-read its configuration file."""

    command: Literal[CommandKind.RELOAD_CONFIG] = CommandKind.RELOAD_CONFIG


Command = Annotated[ResendCommand | ReloadConfigCommand, Field(discriminator="command")]
"""Any command; ``command`` says which."""


class HubState(Message):
    """``segs/v1/hub/state`` (retained): the hub's presence; ``online`` triggers resends."""

    hub_id: Id = Field(description="the hub instance")
    state: ConnectionState = Field(description="online or offline")
    at: UtcTime | None = Field(default=None, description="when declared, UTC; absent in the will")


# ---------------------------------------------------------------- live feeds


class RegionalLoad(Message):
    """``live/load/{region}`` (retained): the region's load in its latest complete minute."""

    region: RegionId = Field(description="the region; equals the topic's region")
    minute: UtcTime = Field(description="start of the minute, UTC")
    total_kw: float = Field(ge=-1e9, le=1e9, description="net load of the region's meters, kW")
    meters_reporting: NonNegative = Field(description="meters with a window in the minute")
    meters_total: NonNegative = Field(description="active meters in the region")
    capacity_kw: float = Field(gt=0.0, le=1e9, description="the region's feeder capacity, kW")
    load_factor: float = Field(ge=-100.0, le=100.0, description="total_kw / capacity_kw")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.minute.second or self.minute.microsecond:
            raise PydanticCustomError("inconsistent", "minute is not at a whole minute")
        if self.meters_reporting > self.meters_total:
            raise PydanticCustomError("inconsistent", "more meters reporting than exist")
        if not math.isclose(self.load_factor, self.total_kw / self.capacity_kw, abs_tol=1e-6):
            raise PydanticCustomError("inconsistent", "load_factor is not total_kw / capacity_kw")
        return self


class TariffUpdate(Message):
    """``live/tariffs/{region}`` (retained): the price in force in a region."""

    region: RegionId = Field(description="the region; equals the topic's region")
    rate_per_kwh: float = Field(ge=0.0, le=1e4, description="price per kWh in currency units")
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 currency code")
    band: Id = Field(description="time-of-use band in force (peak, off_peak, ...)")
    regional_load_factor: float | None = Field(
        default=None, ge=-100.0, le=100.0, description="load factor the price was computed from"
    )
    is_override: bool = Field(description="true while an admin override is in force")
    reason: Text | None = Field(default=None, description="the override's reason")
    effective_from: UtcTime = Field(description="when this price took effect, UTC")
    updated_at: UtcTime = Field(description="when it was published, UTC")


MetadataValue = float | int | str | bool


class AlertNotice(Message):
    """``live/alerts/{region}``: an alert was raised or changed status."""

    alert_id: Id = Field(description="the alert")
    alert_type: AlertType = Field(description="what kind of alert")
    severity: Severity = Field(description="how urgent")
    status: AlertStatus = Field(description="status after this change")
    previous_status: AlertStatus | None = Field(
        default=None, description="status before this change; absent when the alert is new"
    )
    region: RegionId = Field(description="the region; equals the topic's region")
    meter_id: MeterId | None = Field(default=None, description="the meter, for meter alerts")
    gateway_id: GatewayId | None = Field(default=None, description="the gateway, for its alerts")
    message: Text = Field(description="what happened, for people")
    metadata: dict[Annotated[str, Field(max_length=64)], MetadataValue] = Field(
        default_factory=dict, max_length=32, description="rule-specific figures (baseline_kw, ...)"
    )
    created_at: UtcTime = Field(description="when the alert was raised, UTC")
    updated_at: UtcTime = Field(description="when this change happened, UTC")
    acknowledged_by: Id | None = Field(default=None, description="user id that acknowledged it")
    resolution_note: Text | None = Field(default=None, description="note given when resolved")


Payload = (
    GatewayBirth
    | GatewayState
    | WindowBatch
    | EventBatch
    | Ack
    | ResendCommand
    | ReloadConfigCommand
    | HubState
    | RegionalLoad
    | TariffUpdate
    | AlertNotice
)
"""Any decoded top-level payload."""
