"""The registry: regions, gateways and meters, one model family per entity.

``XBase`` holds the fields a client may send, ``XCreate`` validates them, the
table model adds what the hub maintains, ``XPublic`` is what the API shows.
"""

from __future__ import annotations

import zoneinfo
from datetime import datetime
from enum import StrEnum

from pydantic import field_validator
from sqlalchemy import BigInteger, Double
from sqlmodel import Field, SQLModel

from segs.hub.db.types import ID_TYPE, UtcDateTime, utc_now
from segs.protocol.ids import validate_id

__all__ = [
    "Gateway",
    "GatewayBase",
    "GatewayCreate",
    "GatewayPublic",
    "Meter",
    "MeterBase",
    "MeterCreate",
    "MeterPublic",
    "MeterStatus",
    "Region",
    "RegionBase",
    "RegionCreate",
    "RegionPublic",
]


class MeterStatus(StrEnum):
    """Lifecycle of a meter in the registry."""

    ACTIVE = "active"
    INACTIVE = "inactive"
    RETIRED = "retired"


# -- regions -------------------------------------------------------------------------------------


class RegionBase(SQLModel):
    """A region: a feeder area with its own time zone, capacity and currency."""

    name: str = Field(primary_key=True, max_length=64, sa_type=ID_TYPE)
    timezone: str = Field(max_length=64, description="IANA time zone, for billing days")
    capacity_kw: float = Field(gt=0.0, sa_type=Double, description="feeder capacity, kW")
    currency: str = Field(min_length=3, max_length=3, description="ISO 4217 code")


class RegionCreate(RegionBase):
    """A region as an admin creates it; the name follows the protocol's id rules."""

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        return validate_id(name, kind="region")

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, name: str) -> str:
        try:
            zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"not an IANA time zone: {name!r}") from None
        return name


class Region(RegionBase, table=True):
    """``regions``."""

    __tablename__ = "regions"

    created_at: datetime = Field(default_factory=utc_now, sa_type=UtcDateTime)


class RegionPublic(RegionBase):
    """A region as the API shows it."""

    created_at: datetime


# -- gateways ------------------------------------------------------------------------------------


class GatewayBase(SQLModel):
    """A gateway: an edge agent that reads meters and publishes their windows."""

    gateway_id: str = Field(primary_key=True, max_length=64, sa_type=ID_TYPE)
    region: str = Field(foreign_key="regions.name", index=True, max_length=64, sa_type=ID_TYPE)


class GatewayCreate(GatewayBase):
    """A gateway as an admin registers it, with its MQTT credential's hash."""

    credential_hash: str | None = Field(default=None, max_length=255)

    @field_validator("gateway_id")
    @classmethod
    def _valid_id(cls, gateway_id: str) -> str:
        return validate_id(gateway_id, kind="gateway id")


class Gateway(GatewayBase, table=True):
    """``gateways``: registry entry plus what ingest learns from birth and state messages."""

    __tablename__ = "gateways"

    credential_hash: str | None = Field(default=None, max_length=255)
    agent_version: str | None = Field(default=None, max_length=64)
    config_hash: str | None = Field(default=None, max_length=64)
    window_seconds: int | None = None
    started_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    online: bool = False
    last_seen_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    state_changed_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    highest_seq: int = Field(default=0, sa_type=BigInteger, description="highest seq committed")
    ingest_version: int = Field(
        default=0,
        sa_type=BigInteger,
        description="bumped by every commit of this gateway's batches: an ingest worker's "
        "cached view of the gateway's meters is current while it matches",
    )
    outbox_pending_batches: int | None = Field(default=None, sa_type=BigInteger)
    outbox_dropped_batches: int | None = Field(default=None, sa_type=BigInteger)
    outbox_dropped_windows: int | None = Field(default=None, sa_type=BigInteger)
    auto_registered: bool = False
    registered_at: datetime = Field(default_factory=utc_now, sa_type=UtcDateTime)


class GatewayPublic(GatewayBase):
    """A gateway as the API shows it (never the credential hash)."""

    agent_version: str | None
    online: bool
    last_seen_at: datetime | None
    highest_seq: int
    registered_at: datetime


# -- meters --------------------------------------------------------------------------------------


class MeterBase(SQLModel):
    """A meter: read by one gateway, in one region, optionally linked to a customer."""

    meter_id: str = Field(primary_key=True, max_length=64, sa_type=ID_TYPE)
    gateway_id: str = Field(
        foreign_key="gateways.gateway_id", index=True, max_length=64, sa_type=ID_TYPE
    )
    region: str = Field(foreign_key="regions.name", index=True, max_length=64, sa_type=ID_TYPE)
    profile: str | None = Field(
        default=None, max_length=64, sa_type=ID_TYPE, description="device profile id"
    )
    bus: str | None = Field(default=None, max_length=64, sa_type=ID_TYPE)
    unit_id: int | None = Field(default=None, ge=0, le=247, description="Modbus unit id")
    status: str = Field(default=MeterStatus.ACTIVE.value, max_length=16)
    customer_id: str | None = Field(default=None, index=True, max_length=64, sa_type=ID_TYPE)
    installed_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class MeterCreate(MeterBase):
    """A meter as an admin registers it."""

    @field_validator("meter_id")
    @classmethod
    def _valid_id(cls, meter_id: str) -> str:
        return validate_id(meter_id, kind="meter id")

    @field_validator("status")
    @classmethod
    def _valid_status(cls, status: str) -> str:
        return MeterStatus(status).value


class Meter(MeterBase, table=True):
    """``meters``."""

    __tablename__ = "meters"

    auto_registered: bool = False
    registered_at: datetime = Field(default_factory=utc_now, sa_type=UtcDateTime)


class MeterPublic(MeterBase):
    """A meter as the API shows it."""

    registered_at: datetime
