"""Protocol limits: the bounds both sides enforce. Changing one is a protocol change."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

PROTOCOL_VERSION: Final = 1
"""The payload schema version, carried in every payload as ``v``."""

MAX_ID_LENGTH: Final = 64
"""Longest gateway, meter or region id, in characters."""

MAX_PAYLOAD_BYTES: Final = 1024 * 1024
"""Largest payload either side sends or accepts (1 MiB; Mosquitto's default limit is 256 MiB)."""

MAX_WINDOWS_PER_BATCH: Final = 2000
"""Most windows in one ``windows`` batch (about 900 kB of JSON at the maximum)."""

MAX_EVENTS_PER_BATCH: Final = 500
"""Most events in one ``events`` batch."""

MAX_METERS_PER_GATEWAY: Final = 2000
"""Most meters one gateway announces in its birth message."""

MAX_SEQS_PER_ACK: Final = 5000
"""Most seqs acknowledged in one ``ack`` message."""

MAX_SEQ: Final = 2**63 - 1
"""Gateway seqs are positive and fit a signed 64-bit integer (PostgreSQL ``bigint``)."""

MAX_TEXT_LENGTH: Final = 1000
"""Longest free-text field (messages, reasons)."""

MIN_TIME: Final = datetime(2000, 1, 1, tzinfo=UTC)
"""Earliest timestamp accepted on the wire."""

MAX_TIME: Final = datetime(2100, 1, 1, tzinfo=UTC)
"""Latest timestamp accepted on the wire (the hub applies a tighter "not in the future" rule)."""

MAX_WINDOW_SECONDS: Final = 3600
"""Longest window. Window lengths divide a day, so windows never straddle midnight UTC."""

# Physically possible ranges. Wide enough for any low-voltage meter SEGS reads,
# narrow enough to catch garbage registers and unit mix-ups (W sent as kW).
MAX_VOLTAGE_V: Final = 1000.0
MAX_CURRENT_A: Final = 10_000.0
MAX_POWER_KW: Final = 10_000.0
"""Largest magnitude of active power; import is positive, export negative."""
MIN_FREQUENCY_HZ: Final = 40.0
MAX_FREQUENCY_HZ: Final = 70.0
MAX_ENERGY_KWH: Final = 1e10
"""Largest cumulative energy counter value."""
MAX_SAMPLES_PER_WINDOW: Final = 86_400
