"""The exception hierarchy of ``segs.sim``.

Library errors (pymodbus, OS, TOML, JSON) are translated at the boundary into
these, so a caller handles :class:`SimError` and nothing else.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "FaultError",
    "SimError",
    "StartupError",
    "StateFileError",
    "UnknownMeterError",
]


class SimError(Exception):
    """Base class of every error raised by ``segs.sim``."""


class ConfigError(SimError, ValueError):
    """The simulator configuration is invalid; the message names the key."""


class UnknownMeterError(SimError, LookupError):
    """No simulated meter has the given id."""

    def __init__(self, meter_id: str) -> None:
        super().__init__(f"no simulated meter has the id {meter_id!r}")
        self.meter_id = meter_id


class FaultError(SimError, ValueError):
    """A fault cannot be injected (its description is invalid)."""


class StateFileError(SimError):
    """The state file cannot be read or written."""


class StartupError(SimError):
    """A bus or the control API could not start (port in use, missing serial device)."""
