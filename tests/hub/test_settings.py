"""Hub settings: defaults, TOML file, SEGS_* environment, and what production refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from segs.hub.exceptions import ConfigError
from segs.hub.settings import DEFAULT_DATABASE_URL, HubSettings, load_settings


def test_defaults_suit_a_demo_on_one_machine() -> None:
    settings = load_settings()
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.is_sqlite
    assert (settings.mqtt_host, settings.mqtt_port, settings.mqtt_tls) == ("127.0.0.1", 1883, False)
    assert settings.share_group_or_none == "segs-hub"
    assert settings.mode == "demo"


def test_the_environment_overrides_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(
        'database_url = "sqlite:///from-file.db"\nmqtt_url = "mqtts://broker.example"\n'
        'share_group = ""\nretention_days = 30\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("SEGS_CONFIG", str(config))
    monkeypatch.setenv("SEGS_DATABASE_URL", "postgresql+psycopg://segs@db/segs")
    settings = load_settings()
    assert settings.database_url == "postgresql+psycopg://segs@db/segs"
    assert (settings.mqtt_port, settings.mqtt_tls) == (8883, True)
    assert settings.share_group_or_none is None
    assert settings.retention_days == 30


def test_production_refuses_the_demo_database_default(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="database_url: production mode refuses"):
        load_settings(mode="production")
    monkeypatch.setenv("SEGS_DATABASE_URL", "sqlite:///site.db")
    assert load_settings(mode="production").database_url == "sqlite:///site.db"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("mqtt_url", "http://broker", "mqtt_url: must start with mqtt://"),
        ("mqtt_url", "mqtt://user:pw@broker", "must not carry credentials"),
        ("database_url", "mysql://x/y", "database_url: must be sqlite"),
        ("database_url", "sqlite://", "in-memory"),
        ("share_group", "a/b", "share_group: must be a plain MQTT topic level"),
        ("mode", "chaos", "mode:"),
        ("ingest_batch_max_windows", 0, "ingest_batch_max_windows:"),
        ("demo_region_timezone", "Mars/Olympus", "not an IANA time zone"),
        ("nonsense", 1, "nonsense:"),
    ],
)
def test_invalid_settings_name_the_key(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(**{key: value})


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("database_url = ", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)


def test_settings_are_frozen() -> None:
    settings = HubSettings()
    with pytest.raises(ValueError, match="frozen"):
        settings.mode = "production"  # type: ignore[misc]
