"""The edge agent's configuration: one TOML file plus ``SEGS_EDGE_*`` environment overrides.

:func:`load_settings` reads the file, lets environment variables override it
(``SEGS_EDGE_WINDOW_SECONDS=10``, nested keys with ``__``:
``SEGS_EDGE_MQTT__URL=mqtts://broker:8883``) and validates everything at once:
types and bounds, then the cross-field rules (unique bus names, meter ids and
``(bus, unit)`` pairs, every meter's bus exists, every profile loads, the window
length divides a day). Any problem raises :class:`~segs.edge.exceptions.ConfigError`
whose message names the file and, for each problem, the key path::

    edge.toml: meters[1].unit: must be at most 247 (got 248)
    edge.toml: meters[2].bus: no bus is named 'rs485-9' (buses: rs485-0)

Relative paths in the file (a profile file, ``data_dir``, the TLS files) are
relative to the file's folder; relative paths from the environment are relative
to the working directory.

Example::

    gateway_id = "gw-pune-west-01"
    region = "Pune-West"
    window_seconds = 60
    poll_interval_s = 1.0
    data_dir = "/var/lib/segs-edge"

    [mqtt]
    url = "mqtts://broker.example:8883"
    username = "gw-pune-west-01"
    password = "..."
    ca_file = "ca.pem"

    [[buses]]
    name = "rs485-0"
    kind = "tcp"            # or "rtu": device, baudrate, parity, stopbits, bytesize
    host = "127.0.0.1"
    port = 5020

    [[meters]]
    id = "MTR-00000001"
    profile = "sdm630"      # a shipped profile id or a profile file
    bus = "rs485-0"
    unit = 1
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from segs.edge.exceptions import ConfigError
from segs.protocol import limits
from segs.protocol.broker import broker_address, check_broker_url
from segs.protocol.errors import ProfileError
from segs.protocol.ids import Id
from segs.protocol.profiles import Profile, load_profile, shipped_profiles

__all__ = [
    "ENV_PREFIX",
    "Bus",
    "EdgeSettings",
    "MeterConfig",
    "MqttSettings",
    "OutboxSettings",
    "RtuBus",
    "TcpBus",
    "load_settings",
    "rtu_frame_gap_s",
]

ENV_PREFIX: Final = "SEGS_EDGE_"
"""Prefix of the environment variables that override the file (nested keys joined by ``__``)."""

MAX_UNIT: Final = 247
"""Highest Modbus unit id of a device on a bus (248..255 are reserved)."""

BAUDRATES: Final = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400)
"""Baud rates an RTU bus may use."""

MIN_FRAME_GAP_S: Final = 0.00175
"""The Modbus RTU inter-frame gap above 19200 baud (fixed 1.75 ms by the spec)."""

_SECONDS_PER_DAY: Final = 86_400


def rtu_frame_gap_s(
    baudrate: int, *, bytesize: int = 8, parity: str = "N", stopbits: int = 1
) -> float:
    """The Modbus RTU silent interval between frames: 3.5 character times, at least 1.75 ms.

    A character is a start bit, the data bits, the parity bit (unless ``N``) and the
    stop bits; the spec fixes the gap at 1.75 ms above 19200 baud, which is also the
    floor here.
    """
    bits = 1 + bytesize + (parity != "N") + stopbits
    return max(3.5 * bits / baudrate, MIN_FRAME_GAP_S)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- MQTT -----------------------------------------------------------------------------------------


class MqttSettings(_Model):
    """The MQTT broker connection (``[mqtt]``)."""

    url: str = "mqtt://127.0.0.1:1883"
    """``mqtt://host[:port]`` (plain, default port 1883) or ``mqtts://host[:port]`` (TLS, 8883)."""
    username: str | None = None
    password: SecretStr | None = None
    ca_file: Path | None = None
    """TLS: CA bundle that signs the broker's certificate (default: the system's CAs)."""
    cert_file: Path | None = None
    """TLS: client certificate, for brokers that authenticate clients by certificate."""
    key_file: Path | None = None
    """TLS: the client certificate's private key."""
    protocol: Literal["5", "3.1.1"] = "5"
    """MQTT protocol version."""
    keepalive_s: int = Field(default=60, ge=5, le=3600)
    client_id: str | None = Field(default=None, min_length=1, max_length=128)
    """MQTT client id; defaults to the gateway id."""

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_as_text(cls, value: object) -> object:
        # ``protocol = 5`` in TOML is an integer; both spellings mean MQTT 5.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        return check_broker_url(url)

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _file_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"no such file: {os.fspath(path)!r}")
        return path

    @model_validator(mode="after")
    def _check_tls(self) -> MqttSettings:
        tls_files = [
            name for name in ("ca_file", "cert_file", "key_file") if getattr(self, name) is not None
        ]
        if tls_files and not self.tls:
            raise _CrossFieldError([(tls_files[0], "applies to mqtts:// URLs only")])
        if (self.cert_file is None) != (self.key_file is None):
            missing = "key_file" if self.key_file is None else "cert_file"
            raise _CrossFieldError([(missing, "cert_file and key_file go together")])
        if self.password is not None and self.username is None:
            raise _CrossFieldError([("username", "a password needs a username")])
        return self

    @property
    def tls(self) -> bool:
        """Whether the connection uses TLS (``mqtts://``)."""
        return broker_address(self.url).tls

    @property
    def host(self) -> str:
        """The broker's host name or address."""
        return broker_address(self.url).host

    @property
    def port(self) -> int:
        """The broker's port (1883 / 8883 unless the URL names one)."""
        return broker_address(self.url).port


# --- buses and meters -----------------------------------------------------------------------------


class TcpBus(_Model):
    """A Modbus TCP bus: an RS-485-to-TCP gateway or a meter with an Ethernet port."""

    kind: Literal["tcp"]
    name: Id
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)
    timeout_s: float = Field(default=0.5, gt=0.0, le=60.0)
    """How long one request waits for its answer."""

    @property
    def endpoint(self) -> str:
        """``host:port``, for messages."""
        return f"{self.host}:{self.port}"


class RtuBus(_Model):
    """A Modbus RTU serial line (RS-485 adapter)."""

    kind: Literal["rtu"]
    name: Id
    device: str = Field(min_length=1)
    """The serial device, e.g. ``/dev/ttyUSB0``."""
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    timeout_s: float = Field(default=0.5, gt=0.0, le=60.0)
    """How long one request waits for its answer."""
    inter_frame_delay_s: float | None = Field(default=None, ge=0.0, le=1.0)
    """Silence kept between two frames; default: 3.5 character times, at least 1.75 ms."""

    @field_validator("baudrate")
    @classmethod
    def _standard_baudrate(cls, baudrate: int) -> int:
        if baudrate not in BAUDRATES:
            raise ValueError(f"must be one of {', '.join(map(str, BAUDRATES))}, got {baudrate}")
        return baudrate

    @property
    def frame_gap_s(self) -> float:
        """The effective inter-frame delay: ``inter_frame_delay_s`` or the Modbus default."""
        if self.inter_frame_delay_s is not None:
            return self.inter_frame_delay_s
        return rtu_frame_gap_s(
            self.baudrate, bytesize=self.bytesize, parity=self.parity, stopbits=self.stopbits
        )

    @property
    def endpoint(self) -> str:
        """The serial device, for messages."""
        return self.device


Bus = Annotated[TcpBus | RtuBus, Field(discriminator="kind")]
"""A bus, ``kind = "tcp"`` or ``kind = "rtu"``."""


class MeterConfig(_Model):
    """One meter (``[[meters]]``)."""

    id: Id
    profile: str = Field(min_length=1)
    """A shipped profile id (``sdm630``, ``sdm120``, ``sunspec203``) or a profile file path."""
    bus: Id
    """The ``name`` of the bus the meter is on."""
    unit: int = Field(ge=1, le=MAX_UNIT)
    """Modbus unit id (slave address)."""

    def load_profile(self) -> Profile:
        """The meter's device profile (loaded once per file version); ProfileError if it fails."""
        return _profile(self.profile)


def _profile(name: str) -> Profile:
    if name in shipped_profiles():
        return load_profile(name)  # cached by segs.protocol
    try:
        stat = Path(name).stat()
    except OSError:
        return load_profile(name)  # raises the ProfileError that says why
    return _profile_file(name, stat.st_mtime_ns, stat.st_size)


@cache
def _profile_file(path: str, mtime_ns: int, size: int) -> Profile:
    # Keyed on the file's version so a reloaded config sees an edited profile.
    del mtime_ns, size
    return load_profile(path)


class OutboxSettings(_Model):
    """Limits of the store-and-forward outbox (``[outbox]``); the oldest batches go first."""

    max_batches: int = Field(default=100_000, ge=1, le=10_000_000)
    max_bytes: int = Field(default=256 * 1024 * 1024, ge=64 * 1024, le=64 * 1024**3)


# --- the settings -------------------------------------------------------------------------------


class _CrossFieldError(ValueError):
    """Cross-field problems, each with its key path relative to the model that found them."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{key}: {text}" for key, text in problems))
        self.problems = problems


class EdgeSettings(BaseSettings):
    """Everything the edge agent runs with; build it with :func:`load_settings`.

    Frozen; unknown keys are refused. Constructed directly, keyword arguments
    play the role of the file: ``SEGS_EDGE_*`` environment variables still win.
    """

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        validate_default=True,
    )

    gateway_id: Id
    region: Id
    window_seconds: int = Field(default=60, ge=1, le=limits.MAX_WINDOW_SECONDS)
    """Window length, s; divides 86400 so windows align to UTC days."""
    poll_interval_s: float = Field(default=1.0, ge=0.01, le=3600.0)
    """Seconds between two reads of a meter; polls align to multiples of it."""
    data_dir: Path = Path("/var/lib/segs-edge")
    """Where the outbox and the agent's state live."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    mqtt: MqttSettings = MqttSettings()
    # "At least one" is checked with the cross-field rules: pydantic reports a too-short
    # tuple as well when an item is invalid, which would blame the list for the item.
    buses: tuple[Bus, ...]
    meters: tuple[MeterConfig, ...] = Field(max_length=limits.MAX_METERS_PER_GATEWAY)

    # Polling.
    retries: int = Field(default=2, ge=0, le=10)
    """Extra attempts within one poll before a meter counts as offline."""
    backoff_initial_s: float = Field(default=2.0, gt=0.0, le=3600.0)
    """First wait before an offline meter is tried again; doubles up to ``backoff_max_s``."""
    backoff_max_s: float = Field(default=300.0, gt=0.0, le=86_400.0)

    # Events.
    nominal_voltage_v: float = Field(default=230.0, gt=0.0, le=limits.MAX_VOLTAGE_V)
    voltage_tolerance: float = Field(default=0.10, gt=0.0, lt=1.0)
    """Relative voltage deviation that raises an event (EN 50160: 10 %)."""
    spike_ratio: float = Field(default=2.0, gt=1.0, le=1e6)
    """A power spike is ``|P|`` above this times the baseline."""

    # Delivery.
    ack_timeout_s: float = Field(default=30.0, gt=0.0, le=86_400.0)
    """Resend a batch the hub has not acknowledged after this long."""
    max_windows_per_batch: int = Field(default=500, ge=1, le=limits.MAX_WINDOWS_PER_BATCH)
    outbox: OutboxSettings = OutboxSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The environment overrides the file (passed as keyword arguments); nothing else."""
        del settings_cls, dotenv_settings, file_secret_settings
        return (env_settings, init_settings)

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _default_client_id(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or not isinstance(data.get("gateway_id"), str):
            return data
        mqtt = data.get("mqtt")
        if mqtt is None:
            mqtt = {}
        if isinstance(mqtt, Mapping) and mqtt.get("client_id") is None:
            return {**data, "mqtt": {**mqtt, "client_id": data["gateway_id"]}}
        if isinstance(mqtt, MqttSettings) and mqtt.client_id is None:
            return {**data, "mqtt": mqtt.model_copy(update={"client_id": data["gateway_id"]})}
        return data

    @model_validator(mode="after")
    def _cross_check(self) -> EdgeSettings:
        problems = self._timing_problems() + self._bus_problems() + self._meter_problems()
        if problems:
            raise _CrossFieldError(problems)
        return self

    def _timing_problems(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        if _SECONDS_PER_DAY % self.window_seconds:
            problems.append(
                ("window_seconds", f"must divide 86400 (a day), got {self.window_seconds}")
            )
        if self.poll_interval_s > self.window_seconds:
            problems.append(
                (
                    "poll_interval_s",
                    (
                        f"must be at most window_seconds ({self.window_seconds}), "
                        f"got {self.poll_interval_s:g}"
                    ),
                )
            )
        if self.backoff_max_s < self.backoff_initial_s:
            problems.append(
                (
                    "backoff_max_s",
                    (
                        f"must be at least backoff_initial_s ({self.backoff_initial_s:g}), "
                        f"got {self.backoff_max_s:g}"
                    ),
                )
            )
        return problems

    def _bus_problems(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        if not self.buses:
            problems.append(("buses", "no bus is configured ([[buses]])"))
        names: set[str] = set()
        endpoints: dict[tuple[str, ...], str] = {}
        for index, bus in enumerate(self.buses):
            where = f"buses[{index}]"
            if bus.name in names:
                problems.append((f"{where}.name", f"duplicate bus name {bus.name!r}"))
            names.add(bus.name)
            key: tuple[str, ...] = (
                ("tcp", bus.host, str(bus.port)) if isinstance(bus, TcpBus) else ("rtu", bus.device)
            )
            other = endpoints.setdefault(key, bus.name)
            if other != bus.name:
                field = "port" if isinstance(bus, TcpBus) else "device"
                problems.append(
                    (
                        f"{where}.{field}",
                        f"{bus.endpoint} is already bus {other!r}: one bus, one entry",
                    )
                )
        return problems

    def _meter_problems(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        if not self.meters:
            problems.append(("meters", "no meter is configured ([[meters]])"))
        buses = ", ".join(bus.name for bus in self.buses) or "none"
        bus_names = {bus.name for bus in self.buses}
        meter_ids: set[str] = set()
        units: dict[tuple[str, int], str] = {}
        for index, meter in enumerate(self.meters):
            where = f"meters[{index}]"
            if meter.id in meter_ids:
                problems.append((f"{where}.id", f"duplicate meter id {meter.id!r}"))
            meter_ids.add(meter.id)
            if meter.bus not in bus_names:
                problems.append((f"{where}.bus", f"no bus is named {meter.bus!r} (buses: {buses})"))
            other = units.setdefault((meter.bus, meter.unit), meter.id)
            if other != meter.id:
                problems.append(
                    (
                        f"{where}.unit",
                        f"unit {meter.unit} on bus {meter.bus!r} is already meter {other!r}",
                    )
                )
            try:
                meter.load_profile()
            except ProfileError as exc:
                problems.append((f"{where}.profile", str(exc)))
        return problems

    # --- lookups ------------------------------------------------------------------------------

    def bus(self, name: str) -> TcpBus | RtuBus:
        """The bus called ``name``; ``KeyError`` if there is none."""
        for bus in self.buses:
            if bus.name == name:
                return bus
        raise KeyError(name)

    def meters_on(self, bus: str) -> tuple[MeterConfig, ...]:
        """The meters on bus ``bus``, in file order."""
        return tuple(meter for meter in self.meters if meter.bus == bus)

    def config_hash(self) -> str:
        """SHA-256 (hex) of the effective configuration without secrets (for the birth message)."""
        data = self.model_dump(mode="json", exclude={"mqtt": {"password"}})
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(text.encode("ascii")).hexdigest()


# --- loading ------------------------------------------------------------------------------------


def load_settings(path: Path) -> EdgeSettings:
    """Read the TOML file ``path``, apply ``SEGS_EDGE_*`` overrides and validate.

    Raises :class:`ConfigError` naming the file and, for every problem, its key path.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    # Keys starting with "_" would reach pydantic-settings' own init parameters.
    problems = [f"{key}: unknown key" for key in data if key.startswith("_")]
    data = {key: value for key, value in data.items() if not key.startswith("_")}
    try:
        settings = EdgeSettings(**_resolve_paths(data, path.parent))
    except ValidationError as exc:
        problems += _describe(exc)
    else:
        if not problems:
            return settings
    lines = [f"{path}: {problem}" for problem in problems]
    raise ConfigError("\n".join(lines), tuple(problems))


def _relative_to(value: object, base: Path) -> object:
    if isinstance(value, str) and value and not Path(value).is_absolute():
        return str(base / value)
    return value


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make the file's relative paths relative to its folder."""
    out = dict(data)
    if "data_dir" in out:
        out["data_dir"] = _relative_to(out["data_dir"], base)
    mqtt = out.get("mqtt")
    if isinstance(mqtt, dict):
        out["mqtt"] = {
            key: _relative_to(value, base) if key in ("ca_file", "cert_file", "key_file") else value
            for key, value in mqtt.items()
        }
    meters = out.get("meters")
    if isinstance(meters, list):
        shipped = shipped_profiles()
        out["meters"] = [
            {**meter, "profile": _relative_to(meter["profile"], base)}
            if isinstance(meter, dict)
            and isinstance(meter.get("profile"), str)
            and meter["profile"] not in shipped
            else meter
            for meter in meters
        ]
    return out


def _key_path(loc: tuple[int | str, ...]) -> str:
    """``('meters', 1, 'unit')`` → ``meters[1].unit``; drops the bus-kind tag of the union."""
    parts: list[str] = []
    previous: int | str | None = None
    for index, item in enumerate(loc):
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif (
            index == 2
            and loc[0] == "buses"
            and isinstance(previous, int)
            and item in ("tcp", "rtu")
        ):
            pass  # pydantic names the union member: buses[0].tcp.port → buses[0].port
        else:
            parts.append(f".{item}" if parts else item)
        previous = item
    return "".join(parts)


def _env_name(loc: tuple[int | str, ...]) -> str | None:
    """The environment variable that sets ``loc``, when one is set (lists have none)."""
    if any(isinstance(item, int) for item in loc):
        return None
    present = {key.upper() for key in os.environ}
    for end in range(len(loc), 0, -1):  # SEGS_EDGE_MQTT__URL, then SEGS_EDGE_MQTT (JSON)
        name = ENV_PREFIX + "__".join(str(item) for item in loc[:end]).upper()
        if name in present:
            return name
    return None


def _describe(exc: ValidationError) -> list[str]:
    """One ``key.path: problem`` line per pydantic error."""
    problems: list[str] = []
    for error in exc.errors(include_url=False):
        problems += _describe_one(error)
    return problems


def _describe_one(error: ErrorDetails) -> list[str]:
    loc = tuple(error["loc"])
    kind = error["type"]
    context = error.get("ctx") or {}
    cause = context.get("error")
    if isinstance(cause, _CrossFieldError):
        prefix = _key_path(loc)
        return [f"{prefix + '.' if prefix else ''}{key}: {text}" for key, text in cause.problems]
    key = _key_path(loc) or "(top level)"
    value = error.get("input")
    if kind == "extra_forbidden":
        text = "unknown key"
    elif kind == "missing":
        text = "missing (required)"
    elif kind == "union_tag_not_found":
        key, text = f"{key}.kind", 'missing: must be "tcp" or "rtu"'
    elif kind == "union_tag_invalid":
        key, text = f"{key}.kind", f'must be "tcp" or "rtu", got {context.get("tag")!r}'
    else:
        text = error["msg"]
        text = text.removeprefix("Value error, ")
        text = text[:1].lower() + text[1:]
        if text.startswith("input should be "):
            text = "must be " + text.removeprefix("input should be ")
        shown = repr(value)
        if not isinstance(value, Mapping | list | tuple) and shown not in text:
            text += f" (got {shown})"
    env = _env_name(loc)
    if env is not None:
        text += f" (from the environment: {env})"
    return [f"{key}: {text}"]
