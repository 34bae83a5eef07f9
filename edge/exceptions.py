"""The exception hierarchy of ``segs.edge``.

Library errors (sqlite3, OS, pydantic, MQTT, Modbus) are translated at the
boundary into these, so a caller handles :class:`EdgeError` and nothing else.
Invalid arguments also derive from :class:`ValueError`.
"""

from __future__ import annotations

__all__ = [
    "BadAnswerError",
    "BusConnectionError",
    "ConfigError",
    "CorruptBatchError",
    "EdgeError",
    "InvalidBatchError",
    "ModbusError",
    "ModbusExceptionError",
    "NoAnswerError",
    "OutboxClosedError",
    "OutboxError",
]


class EdgeError(Exception):
    """Base class of every error raised by ``segs.edge``."""


class OutboxError(EdgeError):
    """The store-and-forward outbox cannot do what was asked.

    Storage failures (corrupt file, unwritable directory, full disk) are *not*
    raised: the outbox logs them and holds batches in memory until it can write.
    """


class OutboxClosedError(OutboxError, RuntimeError):
    """The outbox was used before ``open()`` or after ``close()``."""


class InvalidBatchError(OutboxError, ValueError):
    """A batch cannot be stored: it is empty, exceeds the protocol's item or byte
    limits (split it first), or repeats a window."""


class CorruptBatchError(OutboxError):
    """A stored batch can no longer be decoded; the message names its seq."""

    def __init__(self, seq: int, cause: str) -> None:
        super().__init__(f"outbox batch seq {seq} cannot be decoded: {cause}")
        self.seq = seq


class ConfigError(EdgeError, ValueError):
    """The edge configuration is invalid.

    The message names the file and, for every problem, the key path
    (``meters[1].unit: ...``); :attr:`problems` lists them one by one.
    """

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems


class ModbusError(EdgeError):
    """A Modbus read failed; the message says why in words an installer understands."""


class NoAnswerError(ModbusError):
    """The meter did not answer within the timeout (offline, wrong unit id, too slow)."""


class ModbusExceptionError(ModbusError):
    """The meter answered with a Modbus exception; :attr:`code` is the exception code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class BadAnswerError(ModbusError):
    """The meter answered, but not with what was asked (wrong register count)."""


class BusConnectionError(ModbusError):
    """The bus itself is unreachable: the TCP gateway refuses or dropped the connection,
    or the serial device cannot be opened."""
