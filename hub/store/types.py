"""What goes into a store commit and what comes out of it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TypeAlias

from segs.protocol import EventBatch, GatewayBirth, GatewayState, WindowBatch

__all__ = [
    "BatchMessage",
    "Clock",
    "CommitResult",
    "DeadLetterRecord",
    "GatewayAck",
    "HubReason",
    "Incoming",
    "IngestMessage",
    "PresenceMessage",
]

Clock: TypeAlias = Callable[[], datetime]
"""Returns the current time, timezone-aware UTC; injectable so tests are deterministic."""

BatchMessage: TypeAlias = WindowBatch | EventBatch
"""Messages acknowledged by seq."""
PresenceMessage: TypeAlias = GatewayBirth | GatewayState
"""Messages that update the registry's view of a gateway."""
IngestMessage: TypeAlias = BatchMessage | PresenceMessage
"""Everything ingest stores."""


class HubReason(StrEnum):
    """The hub's own dead-letter reasons, next to :class:`segs.protocol.Reason`'s. Stable."""

    UNKNOWN_GATEWAY = "unknown_gateway"
    """The gateway is not registered (production mode), or sent a state before any birth."""
    SPOOFED_METER = "spoofed_meter"
    """A window or event names a meter registered to another gateway."""
    FUTURE_WINDOW = "future_window"
    """A window ends (or an event happened) further ahead of the hub's clock than allowed."""
    STORAGE_FAILED = "storage_failed"
    """The database refused the message on its own for a reason retrying cannot fix."""


@dataclass(frozen=True, slots=True)
class Incoming:
    """A decoded message, with the topic and bytes it came as (kept for dead letters)."""

    topic: str
    payload: bytes
    message: IngestMessage
    received_at: datetime
    retained: bool = False
    """A retained birth or state replayed by the broker: no sign of life, so no ``last_seen``."""


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """A refused message to store in ``dead_letters``.

    ``reason`` is a :class:`segs.protocol.Reason` or :class:`HubReason` value. A
    record with a ``gateway_id`` and a ``seq`` is acknowledged as rejected once stored.
    """

    topic: str
    payload: bytes
    reason: str
    message: str
    received_at: datetime
    gateway_id: str | None = None
    seq: int | None = None


@dataclass(slots=True)
class GatewayAck:
    """The seqs of one gateway handled by a commit."""

    seqs: set[int] = field(default_factory=set)
    """Committed (windows and events stored, duplicates included)."""
    rejected: set[int] = field(default_factory=set)
    """Stored as dead letters: the edge drops them."""


@dataclass(slots=True)
class CommitResult:
    """What one commit did; ``acks`` says what ingest may acknowledge now."""

    acks: dict[str, GatewayAck] = field(default_factory=dict)
    batches_committed: int = 0
    batches_rejected: int = 0
    windows_received: int = 0
    """Windows in the committed batches."""
    windows_stored: int = 0
    """Of those, windows that were new."""
    events_received: int = 0
    births: int = 0
    states: int = 0
    dead_letters: int = 0
    gaps_opened: int = 0
    late_windows: int = 0
    """New windows older than their meter's latest one (backlog filling a gap)."""
    counter_breaks: int = 0

    @property
    def windows_duplicate(self) -> int:
        """Windows the store already had (resends, QoS 1 duplicates)."""
        return self.windows_received - self.windows_stored

    def ack(self, gateway_id: str) -> GatewayAck:
        """The (new or existing) ack entry of ``gateway_id``."""
        entry = self.acks.get(gateway_id)
        if entry is None:
            entry = self.acks[gateway_id] = GatewayAck()
        return entry
