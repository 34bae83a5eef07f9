"""Simulator settings: frozen, validated, built from a TOML file or from quick-start arguments.

Both forms produce the same :class:`SimConfig`, and every check lives in the
dataclasses themselves, so a config built in code is held to the same rules as
one read from a file. Errors are :class:`~segs.sim.exceptions.ConfigError`
naming the key (``meters[3].unit_id: ...``).

The TOML form (see ``docs/simulator.md``)::

    seed = 42
    update_interval = 1.0
    state_file = "sim-state.json"   # relative to this file

    [control]
    port = 3010

    [[regions]]
    id = "north"
    timezone = "Europe/Berlin"

    [[buses]]
    id = "bus-1"
    transport = "tcp"
    port = 5020

    [[meters]]
    id = "MTR-00000001"
    bus = "bus-1"
    unit_id = 1
    profile = "sdm630"
    region = "north"
    prosumer = true
"""

from __future__ import annotations

import math
import random
import tomllib
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any, Final, Literal, TypeGuard, cast

from segs.protocol.errors import ProfileError
from segs.protocol.ids import id_problem
from segs.protocol.profiles import Profile, load_profile
from segs.sim.exceptions import ConfigError

__all__ = [
    "DEFAULT_CONTROL_PORT",
    "MAX_UNIT_ID",
    "MIXED_PROFILES",
    "QUICK_PROFILES",
    "BusConfig",
    "ControlConfig",
    "MeterConfig",
    "RegionConfig",
    "SimConfig",
    "load_config",
    "meter_id",
    "parse_config",
    "quick_config",
]

MAX_UNIT_ID: Final = 247
"""Highest Modbus unit id a device on a bus may have (248..255 are reserved)."""

DEFAULT_CONTROL_PORT: Final = 3010

MIXED_PROFILES: Final = ("sdm630", "sdm120", "sunspec203")
"""The rotation ``--profile mixed`` assigns: meter k gets ``MIXED_PROFILES[k % 3]``."""

QUICK_PROFILES: Final = (*MIXED_PROFILES, "mixed")

Transport = Literal["tcp", "rtu"]
Parity = Literal["N", "E", "O"]

_TRANSPORTS: Final = ("tcp", "rtu")
_PARITIES: Final = ("N", "E", "O")
_BAUDRATES: Final = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)


def _fail(key: str, problem: str) -> ConfigError:
    return ConfigError(f"{key}: {problem}")


def _check_id(value: object, key: str) -> None:
    if not isinstance(value, str):
        raise _fail(key, f"must be a string, got {value!r}")
    problem = id_problem(value)
    if problem is not None:
        raise _fail(key, problem)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(value: object, key: str, low: int, high: int) -> None:
    if not _is_int(value):
        raise _fail(key, f"must be an integer, got {value!r}")
    if not low <= value <= high:
        raise _fail(key, f"must be {low}..{high}, got {value}")


def _check_number(value: object, key: str, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(key, f"must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise _fail(key, f"must be {low:g}..{high:g}, got {value!r}")


def _check_str(value: object, key: str) -> None:
    if not isinstance(value, str) or not value:
        raise _fail(key, f"must be a non-empty string, got {value!r}")


@dataclass(frozen=True)
class RegionConfig:
    """A region: meters in it share a feeder (their voltages move together) and a timezone."""

    id: str
    timezone: str = "UTC"
    """IANA timezone; load curves and PV follow its local clock."""
    voltage_offset: float = 0.0
    """The feeder's steady bias against 230 V, in volts."""

    def __post_init__(self) -> None:
        _check_id(self.id, "id")
        _check_str(self.timezone, "timezone")
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise _fail("timezone", f"unknown IANA timezone {self.timezone!r}") from None
        _check_number(self.voltage_offset, "voltage_offset", -30.0, 30.0)


@dataclass(frozen=True)
class BusConfig:
    """One Modbus bus: a TCP server (an RS-485-to-TCP gateway) or an RTU serial line."""

    id: str
    transport: Transport = "tcp"
    host: str = "127.0.0.1"
    """TCP: the address to listen on."""
    port: int = 502
    """TCP: the port to listen on (0 picks a free one)."""
    device: str | None = None
    """RTU: the serial device (``/dev/ttyUSB0``, a pty)."""
    baudrate: int = 9600
    parity: Parity = "N"
    stopbits: int = 1
    bytesize: int = 8

    def __post_init__(self) -> None:
        _check_id(self.id, "id")
        if self.transport not in _TRANSPORTS:
            raise _fail(
                "transport", f"must be one of {', '.join(_TRANSPORTS)}, got {self.transport!r}"
            )
        if self.transport == "tcp":
            _check_str(self.host, "host")
            _check_int(self.port, "port", 0, 65535)
            if self.device is not None:
                raise _fail("device", "applies to rtu buses only")
        else:
            if self.device is None:
                raise _fail("device", 'an rtu bus needs the serial device (device = "/dev/...")')
            _check_str(self.device, "device")
            if self.baudrate not in _BAUDRATES or not _is_int(self.baudrate):
                raise _fail("baudrate", f"must be one of {_BAUDRATES}, got {self.baudrate!r}")
            if self.parity not in _PARITIES:
                raise _fail("parity", f"must be one of {', '.join(_PARITIES)}, got {self.parity!r}")
            _check_int(self.stopbits, "stopbits", 1, 2)
            _check_int(self.bytesize, "bytesize", 7, 8)


@dataclass(frozen=True)
class MeterConfig:
    """One simulated meter: where it answers and what it behaves like."""

    id: str
    bus: str
    unit_id: int
    profile: str
    """A shipped profile id (``sdm630``, ``sdm120``, ``sunspec203``) or a profile file path."""
    region: str
    prosumer: bool = False
    """Whether the meter has PV that exports around midday."""
    seed: int | None = None
    """The meter's own seed; by default derived from the fleet seed and the meter id."""

    def __post_init__(self) -> None:
        _check_id(self.id, "id")
        _check_id(self.bus, "bus")
        _check_int(self.unit_id, "unit_id", 1, MAX_UNIT_ID)
        _check_str(self.profile, "profile")
        _check_id(self.region, "region")
        if not isinstance(self.prosumer, bool):
            raise _fail("prosumer", f"must be true or false, got {self.prosumer!r}")
        if self.seed is not None:
            _check_int(self.seed, "seed", 0, 2**63 - 1)


@dataclass(frozen=True)
class ControlConfig:
    """The HTTP control API."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_CONTROL_PORT
    """0 picks a free port."""
    enabled: bool = True

    def __post_init__(self) -> None:
        _check_str(self.host, "host")
        _check_int(self.port, "port", 0, 65535)
        if not isinstance(self.enabled, bool):
            raise _fail("enabled", f"must be true or false, got {self.enabled!r}")


@cache
def _profile(name: str) -> Profile:
    return load_profile(name)


@dataclass(frozen=True)
class SimConfig:
    """Everything the simulator runs: regions, buses, meters, seed, timers, control API."""

    regions: tuple[RegionConfig, ...]
    buses: tuple[BusConfig, ...]
    meters: tuple[MeterConfig, ...]
    seed: int = 0
    update_interval: float = 1.0
    """Seconds between two physics updates of the whole fleet."""
    control: ControlConfig = field(default_factory=ControlConfig)
    state_file: Path | None = None
    """Where energy counters persist across restarts (``None``: they do not)."""
    state_interval: float = 10.0
    """Seconds between two saves of the state file (it is also saved at shutdown)."""

    def __post_init__(self) -> None:
        _check_int(self.seed, "seed", 0, 2**63 - 1)
        _check_number(self.update_interval, "update_interval", 0.01, 3600.0)
        _check_number(self.state_interval, "state_interval", 0.1, 86400.0)
        if self.state_file is not None and not isinstance(self.state_file, Path):
            raise _fail("state_file", f"must be a path, got {self.state_file!r}")
        if not self.meters:
            raise _fail("meters", "at least one meter is needed")
        regions = _unique([r.id for r in self.regions], "regions")
        buses = _unique([b.id for b in self.buses], "buses")
        _unique([m.id for m in self.meters], "meters")
        endpoints: dict[tuple[str, int], str] = {}
        devices: dict[str, str] = {}
        for index, bus in enumerate(self.buses):
            if bus.transport == "tcp" and bus.port != 0:
                other = endpoints.setdefault((bus.host, bus.port), bus.id)
                if other != bus.id:
                    raise _fail(
                        f"buses[{index}].port",
                        f"{bus.host}:{bus.port} is already used by bus {other!r}",
                    )
            if bus.device is not None:
                other = devices.setdefault(bus.device, bus.id)
                if other != bus.id:
                    raise _fail(f"buses[{index}].device", f"already used by bus {other!r}")
        units: dict[tuple[str, int], str] = {}
        for index, meter in enumerate(self.meters):
            where = f"meters[{index}]"
            if meter.bus not in buses:
                raise _fail(f"{where}.bus", f"no bus has the id {meter.bus!r}")
            if meter.region not in regions:
                raise _fail(f"{where}.region", f"no region has the id {meter.region!r}")
            other = units.setdefault((meter.bus, meter.unit_id), meter.id)
            if other != meter.id:
                raise _fail(
                    f"{where}.unit_id",
                    f"unit id {meter.unit_id} on bus {meter.bus!r} is already meter {other!r}",
                )
            try:
                _profile(meter.profile)
            except ProfileError as exc:
                raise _fail(f"{where}.profile", str(exc)) from None

    def profile(self, name: str) -> Profile:
        """Return the loaded profile ``name`` (validated when the config was built)."""
        return _profile(name)


def _unique(ids: Sequence[str], key: str) -> set[str]:
    seen: set[str] = set()
    for index, value in enumerate(ids):
        if value in seen:
            raise _fail(f"{key}[{index}].id", f"duplicate id {value!r}")
        seen.add(value)
    return seen


# --- quick start ------------------------------------------------------------------------------


def meter_id(number: int) -> str:
    """Return the quick-start id of meter ``number`` (1-based): ``MTR-00000001``."""
    return f"MTR-{number:08d}"


def quick_config(
    meters: int,
    port: int,
    *,
    profile: str = "sdm630",
    seed: int = 0,
    host: str = "127.0.0.1",
    per_bus: int = MAX_UNIT_ID,
    prosumer_share: float = 0.3,
    timezone: str = "UTC",
    update_interval: float = 1.0,
    control: ControlConfig | None = None,
    state_file: Path | None = None,
    state_interval: float = 10.0,
) -> SimConfig:
    """Build the config of ``segs sim --meters N --port P``.

    Meters ``MTR-00000001``... get unit ids 1..``per_bus`` on the bus at ``port``;
    more meters go to further buses on consecutive ports (``port`` 0 gives every
    bus a free port). Each bus is its own region ``region-<n>``. ``profile``
    ``mixed`` rotates through :data:`MIXED_PROFILES`; a seeded draw makes about
    ``prosumer_share`` of the meters prosumers.
    """
    _check_int(meters, "meters", 1, 100_000)
    _check_int(per_bus, "per_bus", 1, MAX_UNIT_ID)
    _check_int(port, "port", 0, 65535)
    _check_number(prosumer_share, "prosumer_share", 0.0, 1.0)
    if profile not in QUICK_PROFILES:
        raise _fail("profile", f"must be one of {', '.join(QUICK_PROFILES)}, got {profile!r}")
    bus_count = -(-meters // per_bus)
    if port != 0 and port + bus_count - 1 > 65535:
        raise _fail("port", f"{bus_count} buses from port {port} run past 65535")
    draw = random.Random(seed)  # noqa: S311 - simulation, not security
    regions = tuple(RegionConfig(f"region-{b + 1}", timezone=timezone) for b in range(bus_count))
    buses = tuple(
        BusConfig(f"bus-{b + 1}", host=host, port=port + b if port else 0) for b in range(bus_count)
    )
    chosen = tuple(
        MeterConfig(
            id=meter_id(k + 1),
            bus=f"bus-{k // per_bus + 1}",
            unit_id=k % per_bus + 1,
            profile=MIXED_PROFILES[k % len(MIXED_PROFILES)] if profile == "mixed" else profile,
            region=f"region-{k // per_bus + 1}",
            prosumer=draw.random() < prosumer_share,
        )
        for k in range(meters)
    )
    return SimConfig(
        regions=regions,
        buses=buses,
        meters=chosen,
        seed=seed,
        update_interval=update_interval,
        control=control or ControlConfig(),
        state_file=state_file,
        state_interval=state_interval,
    )


# --- the TOML form ----------------------------------------------------------------------------

_TOP_KEYS: Final = frozenset(
    {
        "seed",
        "update_interval",
        "state_file",
        "state_interval",
        "control",
        "regions",
        "buses",
        "meters",
    }
)


def _table_keys(cls: type[Any]) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls))


def _build(cls: type[Any], table: object, key: str) -> Any:
    """Build dataclass ``cls`` from a TOML table, naming ``key`` in every error."""
    if not isinstance(table, Mapping):
        raise _fail(key, "must be a table")
    unknown = sorted(set(table) - _table_keys(cls))
    if unknown:
        raise _fail(key, f"unknown key(s) {', '.join(unknown)}")
    try:
        return cls(**table)
    except ConfigError as exc:
        raise ConfigError(f"{key}.{exc}") from None
    except TypeError as exc:
        # A required key is missing: the dataclass constructor says which.
        missing = str(exc).split(":", 1)[-1].strip()
        raise _fail(key, f"missing key(s): {missing}") from None


def _array(data: Mapping[str, Any], key: str, cls: type[Any]) -> tuple[Any, ...]:
    items = data.get(key, [])
    if not isinstance(items, list):
        raise _fail(key, f"must be an array of tables ([[{key}]])")
    return tuple(_build(cls, item, f"{key}[{index}]") for index, item in enumerate(items))


def parse_config(data: Mapping[str, Any], *, base: Path | None = None) -> SimConfig:
    """Build a :class:`SimConfig` from parsed TOML; ``state_file`` is relative to ``base``."""
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {', '.join(unknown)}")
    state = data.get("state_file")
    state_file: Path | None = None
    if state is not None:
        _check_str(state, "state_file")
        state_file = (base or Path()) / cast("str", state)
    control = (
        _build(ControlConfig, data["control"], "control") if "control" in data else ControlConfig()
    )
    return SimConfig(
        regions=_array(data, "regions", RegionConfig),
        buses=_array(data, "buses", BusConfig),
        meters=_array(data, "meters", MeterConfig),
        seed=data.get("seed", 0),
        update_interval=data.get("update_interval", 1.0),
        control=control,
        state_file=state_file,
        state_interval=data.get("state_interval", 10.0),
    )


def load_config(path: Path) -> SimConfig:
    """Read and validate a simulator config file (TOML)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return parse_config(data, base=path.parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
