"""The hub's settings: one pydantic-settings class, ``SEGS_*`` variables and an optional TOML file.

:func:`load_settings` reads the TOML file named by its argument or by
``SEGS_CONFIG`` (keys are the field names below), lets ``SEGS_*`` environment
variables override it (``SEGS_DATABASE_URL=postgresql+psycopg://...``) and
validates everything at once; any problem raises
:class:`~segs.hub.exceptions.ConfigError` naming the setting. Constructed
directly, keyword arguments play the role of the file: environment variables
still win, as for the edge's settings.

Example ``hub.toml``::

    database_url = "postgresql+psycopg://segs@db.example/segs"
    mqtt_url = "mqtts://broker.example:8883"
    mqtt_username = "hub"
    mqtt_password = "..."
    mode = "production"
    hub_id = "hub-a"

Outside ``demo`` mode the settings refuse the defaults that only make sense on
a developer's machine: the database must be named explicitly.
"""

from __future__ import annotations

import os
import tomllib
import zoneinfo
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from segs.hub.exceptions import ConfigError
from segs.protocol import limits
from segs.protocol.broker import broker_address, check_broker_url
from segs.protocol.ids import Id

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_DATABASE_URL",
    "DEMO_JWT_SECRET",
    "ENV_PREFIX",
    "HubSettings",
    "Mode",
    "load_settings",
]

ENV_PREFIX: Final = "SEGS_"
"""Prefix of the environment variables that override the file."""
CONFIG_ENV: Final = "SEGS_CONFIG"
"""The environment variable naming the optional TOML settings file."""
DEFAULT_DATABASE_URL: Final = "sqlite:///segs.db"
"""An SQLite file in the working directory: the embedded default for demos."""
DEMO_JWT_SECRET: Final = "segs-demo-secret-change-me-outside-demo-mode"  # noqa: S105
"""The default token signing key: fine on a laptop, refused in production mode."""

_DATABASE_SCHEMES: Final = ("sqlite", "postgresql", "postgresql+psycopg", "postgres")

Mode = Literal["demo", "production"]
"""``demo`` registers unknown gateways and regions on the fly; ``production`` rejects them."""


class HubSettings(BaseSettings):
    """Everything the hub runs with; build it with :func:`load_settings`. Frozen."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix=ENV_PREFIX,
        validate_default=True,
    )

    # -- storage -----------------------------------------------------------------------------
    database_url: str = DEFAULT_DATABASE_URL
    """SQLAlchemy URL: ``sqlite:///path.db`` or ``postgresql+psycopg://user:pw@host/db``."""

    # -- MQTT --------------------------------------------------------------------------------
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    """``mqtt://host[:port]`` or ``mqtts://host[:port]`` (TLS)."""
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_ca_file: Path | None = None
    """TLS: CA bundle of the broker's certificate (default: the system's CAs)."""
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = None
    mqtt_keepalive_s: int = Field(default=30, ge=5, le=3600)
    share_group: str = "segs-hub"
    """MQTT shared-subscription group of the ingest workers; empty for a plain subscription."""

    # -- identity and mode -------------------------------------------------------------------
    mode: Mode = "demo"
    hub_id: Id = "hub-1"
    """This hub instance, in ``HubState`` and in the dead letters it writes."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # -- ingest ------------------------------------------------------------------------------
    ingest_batch_max_windows: int = Field(default=20_000, ge=1, le=200_000)
    """Most windows committed in one transaction (group commit: under load, a meter's
    consecutive windows share one rollup update)."""
    ingest_batch_max_delay_s: float = Field(default=0.05, ge=0.0, le=10.0)
    """Longest a received batch waits for others to share its commit."""
    ingest_max_pending_windows: int = Field(default=200_000, ge=1, le=10_000_000)
    """Above this many decoded, uncommitted windows, new batches are dropped unacknowledged
    (the edge resends them): memory stays bounded when the database falls behind."""
    future_tolerance_s: float = Field(default=300.0, ge=0.0, le=86_400.0)
    """A window ending (or an event) more than this ahead of the hub's clock is refused."""
    counter_tolerance_kwh: float = Field(default=0.001, ge=0.0, le=1e6)
    """Largest counter mismatch between consecutive windows that is not a break."""
    registry_cache_s: float = Field(default=60.0, ge=0.0, le=86_400.0)
    """How long ingest trusts its cached meter → gateway map before re-reading it."""
    commit_retry_max_s: float = Field(default=30.0, gt=0.0, le=3600.0)
    """Longest wait between two attempts of a commit the database could not take."""

    # -- demo-mode registration --------------------------------------------------------------
    demo_region: Id = "unassigned"
    """Region of a gateway auto-registered before its birth told its region (demo mode)."""
    demo_region_timezone: str = "UTC"
    demo_region_capacity_kw: float = Field(default=1000.0, gt=0.0, le=1e9)
    demo_region_currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")

    # -- retention ---------------------------------------------------------------------------
    retention_days: float = Field(default=90.0, ge=0.0, le=36_500.0)
    """Minute windows older than this are deleted (rollups stay); 0 keeps them forever."""
    retention_interval_s: float = Field(default=3600.0, gt=0.0, le=86_400.0)
    retention_batch_size: int = Field(default=10_000, ge=1, le=1_000_000)

    # -- API -----------------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    """Address the REST API listens on (``0.0.0.0`` to serve other machines)."""
    api_port: int = Field(default=8000, ge=0, le=65_535)
    """Port of the REST API (``SEGS_API_PORT``); 0 picks a free one."""
    jwt_secret: SecretStr = SecretStr(DEMO_JWT_SECRET)
    """HS256 signing key of access tokens; the API refuses the default outside demo mode
    (an ingest-only worker never needs it)."""
    jwt_algorithm: Literal["HS256", "RS256"] = "HS256"
    jwt_private_key_file: Path | None = None
    """RS256: PEM private key that signs access tokens."""
    jwt_public_key_file: Path | None = None
    """RS256: PEM public key that verifies them."""
    jwt_issuer: str = "segs-hub"
    access_token_ttl_s: int = Field(default=900, ge=30, le=86_400)
    refresh_token_ttl_s: int = Field(default=30 * 86_400, ge=300, le=365 * 86_400)
    otp_ttl_s: int = Field(default=600, ge=60, le=86_400)
    otp_max_attempts: int = Field(default=5, ge=1, le=100)
    login_max_failures: int = Field(default=5, ge=1, le=1000)
    """Consecutive failed logins of one account before it is locked for ``login_lockout_s``."""
    login_lockout_s: int = Field(default=900, ge=1, le=86_400)
    login_rate_per_address: str = "30/5minutes"
    """Login attempts allowed per client address (``limits`` notation, e.g. ``30/5minutes``)."""
    password_min_length: int = Field(default=10, ge=8, le=128)

    # -- mail ----------------------------------------------------------------------------------
    smtp_host: str | None = None
    """SMTP server for one-time codes; without it mail stays in the outbox table
    (``segs hub outbox`` prints it)."""
    smtp_port: int = Field(default=587, ge=1, le=65_535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = True
    mail_from: str = "SEGS <no-reply@segs.invalid>"

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

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, url: str) -> str:
        scheme = url.split("://", 1)[0] if "://" in url else ""
        if scheme not in _DATABASE_SCHEMES:
            raise ValueError(
                f"must be sqlite:///FILE or postgresql+psycopg://..., got {_redact(url)!r}"
            )
        if scheme == "sqlite" and url.rstrip("/") in {"sqlite:", "sqlite:/", "sqlite://"}:
            raise ValueError("an in-memory SQLite database cannot be shared; name a file")
        if scheme == "sqlite" and ":memory:" in url:
            raise ValueError("an in-memory SQLite database cannot be shared; name a file")
        return url

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt_url(cls, url: str) -> str:
        return check_broker_url(url, credentials_hint="mqtt_username and mqtt_password")

    @field_validator("share_group")
    @classmethod
    def _check_share_group(cls, group: str) -> str:
        if group and (len(group) > limits.MAX_ID_LENGTH or any(c in group for c in "/+#$ ")):
            raise ValueError(f"must be a plain MQTT topic level, got {group!r}")
        return group

    @field_validator("demo_region_timezone")
    @classmethod
    def _check_timezone(cls, name: str) -> str:
        try:
            zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"is not an IANA time zone: {name!r}") from None
        return name

    @field_validator("login_rate_per_address")
    @classmethod
    def _check_rate(cls, rate: str) -> str:
        from limits import parse  # noqa: PLC0415 - only the API needs limits at run time

        try:
            parse(rate)
        except ValueError:
            raise ValueError(f"must be like '30/5minutes', got {rate!r}") from None
        return rate

    @field_validator(
        "mqtt_ca_file",
        "mqtt_cert_file",
        "mqtt_key_file",
        "jwt_private_key_file",
        "jwt_public_key_file",
    )
    @classmethod
    def _file_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"no such file: {os.fspath(path)!r}")
        return path

    @model_validator(mode="after")
    def _cross_check(self) -> HubSettings:
        tls_files = [
            name
            for name in ("mqtt_ca_file", "mqtt_cert_file", "mqtt_key_file")
            if getattr(self, name) is not None
        ]
        if tls_files and not self.mqtt_tls:
            raise ValueError(f"{tls_files[0]} applies to mqtts:// URLs only")
        if (self.mqtt_cert_file is None) != (self.mqtt_key_file is None):
            raise ValueError("mqtt_cert_file and mqtt_key_file go together")
        if self.mqtt_password is not None and self.mqtt_username is None:
            raise ValueError("mqtt_password needs mqtt_username")
        if self.jwt_algorithm == "RS256" and self.jwt_public_key_file is None:
            raise ValueError("jwt_public_key_file: RS256 needs the PEM public key")
        if self.jwt_algorithm == "HS256" and len(self.jwt_secret.get_secret_value()) < 32:
            raise ValueError("jwt_secret: use at least 32 characters")
        if self.smtp_password is not None and self.smtp_username is None:
            raise ValueError("smtp_password needs smtp_username")
        if self.mode != "demo" and "database_url" not in self.model_fields_set:
            raise ValueError(
                f"database_url: {self.mode} mode refuses the demo default "
                f"{DEFAULT_DATABASE_URL!r}; set SEGS_DATABASE_URL"
            )
        return self

    # -- derived -----------------------------------------------------------------------------

    @property
    def mqtt_tls(self) -> bool:
        """Whether the broker connection uses TLS (``mqtts://``)."""
        return broker_address(self.mqtt_url).tls

    @property
    def mqtt_host(self) -> str:
        """The broker's host."""
        return broker_address(self.mqtt_url).host

    @property
    def mqtt_port(self) -> int:
        """The broker's port (1883 / 8883 unless the URL names one)."""
        return broker_address(self.mqtt_url).port

    @property
    def share_group_or_none(self) -> str | None:
        """The shared-subscription group, or ``None`` for a plain subscription."""
        return self.share_group or None

    @property
    def is_sqlite(self) -> bool:
        """Whether the database is an SQLite file."""
        return self.database_url.startswith("sqlite:")


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def load_settings(path: Path | None = None, **overrides: Any) -> HubSettings:
    """Read the TOML file ``path`` (default: ``$SEGS_CONFIG``, else none) and the environment.

    ``overrides`` take the place of keys in the file. Raises :class:`ConfigError`
    naming the file (when there is one) and each invalid setting.
    """
    if path is None and os.environ.get(CONFIG_ENV):
        path = Path(os.environ[CONFIG_ENV])
    data: dict[str, Any] = {}
    where = "settings"
    if path is not None:
        where = os.fspath(path)
        try:
            with path.open("rb") as handle:
                data = tomllib.load(handle)
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read: {exc.strerror or exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{where}: not valid TOML: {exc}") from exc
    data.update(overrides)
    try:
        return HubSettings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(where, exc)) from None


def _describe(where: str, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_url=False):
        key = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {key}: {message}" if key else f"{where}: {message}")
    return "\n".join(lines)
