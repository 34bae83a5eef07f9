"""The hub's database: SQLModel table models, column types, engines and migrations.

Importing this package registers every table on :data:`metadata`.
"""

from __future__ import annotations

from segs.hub.db.accounts import (
    MailMessage,
    OneTimeCode,
    OtpPurpose,
    RefreshToken,
    Role,
    Severity,
    User,
    UserPreferences,
    UserStatus,
)
from segs.hub.db.base import NAMING_CONVENTION, metadata
from segs.hub.db.readings import (
    DeadLetter,
    MeterEvent,
    MeterGap,
    MeterRollup15m,
    MeterRollupDaily,
    MeterWindow,
    RegionalLoad,
    RollupFields,
)
from segs.hub.db.registry import (
    Gateway,
    GatewayBase,
    GatewayCreate,
    GatewayPublic,
    Meter,
    MeterBase,
    MeterCreate,
    MeterPublic,
    MeterStatus,
    Region,
    RegionBase,
    RegionCreate,
    RegionPublic,
)
from segs.hub.db.types import UtcDateTime, from_micros, to_micros, utc_now

__all__ = [
    "NAMING_CONVENTION",
    "DeadLetter",
    "Gateway",
    "GatewayBase",
    "GatewayCreate",
    "GatewayPublic",
    "MailMessage",
    "Meter",
    "MeterBase",
    "MeterCreate",
    "MeterEvent",
    "MeterGap",
    "MeterPublic",
    "MeterRollup15m",
    "MeterRollupDaily",
    "MeterStatus",
    "MeterWindow",
    "OneTimeCode",
    "OtpPurpose",
    "RefreshToken",
    "Region",
    "RegionBase",
    "RegionCreate",
    "RegionPublic",
    "RegionalLoad",
    "Role",
    "RollupFields",
    "Severity",
    "User",
    "UserPreferences",
    "UserStatus",
    "UtcDateTime",
    "from_micros",
    "metadata",
    "to_micros",
    "utc_now",
]
