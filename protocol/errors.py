"""The exception hierarchy of ``segs.protocol``.

Every decode failure is a :class:`DecodeError` carrying a machine-readable
:class:`Reason` and a human message; the hub stores both in its dead-letter table.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why a payload (or the topic it came on) was rejected. Stable: stored by the hub."""

    TOO_LARGE = "too_large"
    """The payload is longer than ``limits.MAX_PAYLOAD_BYTES``."""
    NOT_UTF8 = "not_utf8"
    """The payload bytes are not valid UTF-8."""
    MALFORMED_JSON = "malformed_json"
    """The payload is not a JSON document."""
    NOT_AN_OBJECT = "not_an_object"
    """The JSON document is not an object."""
    UNSUPPORTED_VERSION = "unsupported_version"
    """The ``v`` field names a protocol version this build does not speak."""
    MISSING_FIELD = "missing_field"
    """A required field is absent."""
    EXTRA_FIELD = "extra_field"
    """A field the message type does not define is present."""
    WRONG_TYPE = "wrong_type"
    """A field has the wrong JSON type (a string for a number, ...)."""
    NOT_FINITE = "not_finite"
    """A number is NaN or infinite."""
    OUT_OF_RANGE = "out_of_range"
    """A number, string length or enum value is outside what is physically or legally possible."""
    TOO_MANY_ITEMS = "too_many_items"
    """A list is longer than its limit (windows per batch, ...)."""
    INVALID_ID = "invalid_id"
    """A gateway, meter or region id is empty, too long or has a forbidden character."""
    INVALID_TIME = "invalid_time"
    """A timestamp is not UTC, is naive, or is outside the accepted years."""
    INCONSISTENT = "inconsistent"
    """Fields contradict each other (power min above max, more samples than expected, ...)."""
    UNKNOWN_TOPIC = "unknown_topic"
    """The topic is not one of the SEGS topics, or not one a payload may arrive on."""
    ID_MISMATCH = "id_mismatch"
    """The gateway or region id in the topic differs from the one in the payload."""
    INVALID_VALUE = "invalid_value"
    """Any other invalid value."""


class ProtocolError(Exception):
    """Base class of every error raised by ``segs.protocol``."""


class InvalidIdError(ProtocolError, ValueError):
    """A gateway, meter or region id does not satisfy the id rules."""


class TopicError(ProtocolError, ValueError):
    """A topic is not a SEGS topic, or is malformed."""


class DecodeError(ProtocolError, ValueError):
    """A payload could not be decoded; ``reason`` says why in a stable, machine-readable form."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.message = message


class EncodeError(ProtocolError, ValueError):
    """A message cannot be put on the wire (it would exceed a protocol limit)."""


class ProfileError(ProtocolError, ValueError):
    """A Modbus device profile is invalid; the message names the profile and the register."""
