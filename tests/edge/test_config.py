"""The edge config: the issue's example loads, every invalid case names its key, env wins."""

from __future__ import annotations

import re
import textwrap
from importlib import resources
from pathlib import Path

import pytest

from segs.edge.config import EdgeSettings, RtuBus, TcpBus, load_settings, rtu_frame_gap_s
from segs.edge.exceptions import ConfigError, EdgeError

pytestmark = pytest.mark.usefixtures("clean_env")

EXAMPLE = """\
gateway_id = "gw-pune-west-01"
region = "Pune-West"
window_seconds = 60          # tests use a few seconds
poll_interval_s = 1.0
data_dir = "/var/lib/segs-edge"

[mqtt]
url = "mqtt://127.0.0.1:1883"
username = "gw-pune-west-01"
password = "s3cret"

[[buses]]
name = "rs485-0"
kind = "tcp"
host = "127.0.0.1"
port = 5020

[[buses]]
name = "line-1"
kind = "rtu"
device = "/dev/ttyUSB0"
baudrate = 9600
parity = "E"
stopbits = 1

[[meters]]
id = "MTR-00000001"
profile = "sdm630"
bus = "rs485-0"
unit = 1

[[meters]]
id = "MTR-00000002"
profile = "sdm120"
bus = "rs485-0"
unit = 2

[[meters]]
id = "MTR-00000003"
profile = "sunspec203"
bus = "line-1"
unit = 1
"""


def write(tmp_path: Path, text: str, name: str = "edge.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return str(info.value)


def test_the_issue_example_loads_with_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, EXAMPLE))
    assert settings.gateway_id == "gw-pune-west-01"
    assert settings.region == "Pune-West"
    assert settings.window_seconds == 60
    assert settings.poll_interval_s == 1.0
    assert settings.data_dir == Path("/var/lib/segs-edge")
    mqtt = settings.mqtt
    assert (mqtt.host, mqtt.port, mqtt.tls) == ("127.0.0.1", 1883, False)
    assert mqtt.password is not None
    assert mqtt.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)
    assert mqtt.client_id == "gw-pune-west-01"
    assert mqtt.protocol == "5"
    tcp, rtu = settings.buses
    assert isinstance(tcp, TcpBus)
    assert (tcp.host, tcp.port, tcp.timeout_s) == ("127.0.0.1", 5020, 0.5)
    assert isinstance(rtu, RtuBus)
    assert (rtu.baudrate, rtu.parity, rtu.stopbits, rtu.bytesize) == (9600, "E", 1, 8)
    # 3.5 characters of 11 bits (start, 8 data, parity, stop) at 9600 baud.
    assert rtu.frame_gap_s == pytest.approx(3.5 * 11 / 9600)
    assert [m.unit for m in settings.meters_on("rs485-0")] == [1, 2]
    assert [m.load_profile().id for m in settings.meters] == ["sdm630", "sdm120", "sunspec203"]
    assert len(settings.meters[0].load_profile().blocks) == 3
    # Tunables.
    assert (settings.retries, settings.backoff_initial_s, settings.backoff_max_s) == (2, 2.0, 300.0)
    assert (settings.nominal_voltage_v, settings.spike_ratio) == (230.0, 2.0)
    assert (settings.ack_timeout_s, settings.max_windows_per_batch) == (30.0, 500)
    assert settings.outbox.max_batches >= 1
    assert settings.log_level == "info"


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, EXAMPLE))
    with pytest.raises(ValueError, match="frozen"):
        settings.window_seconds = 10  # type: ignore[misc]


def test_config_hash_ignores_secrets_but_not_meters(tmp_path: Path) -> None:
    first = load_settings(write(tmp_path, EXAMPLE)).config_hash()
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    other_password = load_settings(write(tmp_path, EXAMPLE.replace("s3cret", "other")))
    assert other_password.config_hash() == first
    other_unit = load_settings(write(tmp_path, EXAMPLE.replace("unit = 2", "unit = 3")))
    assert other_unit.config_hash() != first


def test_rtu_frame_gap_follows_the_baud_rate_with_a_floor() -> None:
    assert rtu_frame_gap_s(9600) == pytest.approx(3.5 * 10 / 9600)
    assert rtu_frame_gap_s(2400, parity="E", stopbits=2) == pytest.approx(3.5 * 12 / 2400)
    assert rtu_frame_gap_s(115200) == pytest.approx(0.00175)
    bus = RtuBus(kind="rtu", name="l", device="/dev/x", inter_frame_delay_s=0.01)
    assert bus.frame_gap_s == 0.01


def _with(old: str, new: str) -> str:
    assert old in EXAMPLE, old
    return EXAMPLE.replace(old, new, 1)


INVALID = [
    pytest.param(_with("unit = 2", "unit = 248"), "meters[1].unit: ", id="unit-range"),
    pytest.param(_with("unit = 2", "unit = 0"), "meters[1].unit: ", id="unit-zero"),
    pytest.param(
        _with('id = "MTR-00000002"', 'id = "MTR-00000001"'), "meters[1].id: duplicate", id="dup-id"
    ),
    pytest.param(_with("unit = 2", "unit = 1"), "meters[1].unit: unit 1 on bus", id="dup-unit"),
    pytest.param(
        _with('bus = "line-1"', 'bus = "line-9"'), "meters[2].bus: no bus is named", id="no-bus"
    ),
    pytest.param(
        _with('profile = "sdm120"', 'profile = "sdm999"'), "meters[1].profile: ", id="profile"
    ),
    pytest.param(_with('id = "MTR-00000003"', 'id = "MTR/3"'), "meters[2].id: ", id="bad-id"),
    pytest.param(_with("unit = 1\n", "unit = 1\ncolour = 3\n"), "meters[0].colour: unknown key"),
    pytest.param(_with('name = "line-1"', 'name = "rs485-0"'), "buses[1].name: duplicate"),
    pytest.param(_with('parity = "E"', 'parity = "X"'), "buses[1].parity: ", id="parity"),
    pytest.param(_with("baudrate = 9600", "baudrate = 9601"), "buses[1].baudrate: "),
    pytest.param(_with('kind = "rtu"\n', 'kind = "usb"\n'), "buses[1].kind: ", id="kind"),
    pytest.param(_with('kind = "tcp"\n', ""), "buses[0].kind: missing", id="kind-missing"),
    pytest.param(_with("port = 5020", "port = 70000"), "buses[0].port: ", id="port"),
    pytest.param(_with("window_seconds = 60", "window_seconds = 7"), "window_seconds: "),
    pytest.param(_with("window_seconds = 60", "window_seconds = 7200"), "window_seconds: "),
    pytest.param(_with("poll_interval_s = 1.0", "poll_interval_s = 90.0"), "poll_interval_s: "),
    pytest.param(_with('"mqtt://127.0.0.1:1883"', '"http://x"'), "mqtt.url: ", id="url"),
    pytest.param(_with("[mqtt]\n", '[mqtt]\nca_file = "edge.toml"\n'), "mqtt.ca_file: "),
    pytest.param(_with('gateway_id = "gw-pune-west-01"', 'gateway_id = "gw/1"'), "gateway_id: "),
    pytest.param(_with('region = "Pune-West"\n', ""), "region: missing", id="region-missing"),
    pytest.param(_with("data_dir", "data_dri"), "data_dri: unknown key", id="typo"),
    pytest.param(EXAMPLE.split("[[meters]]", maxsplit=1)[0], "meters: missing", id="no-meters"),
    pytest.param(_with("[mqtt]\n", "retries = -1\n[mqtt]\n"), "retries: ", id="retries"),
    pytest.param(
        _with("[mqtt]\n", "backoff_initial_s = 10\nbackoff_max_s = 5\n[mqtt]\n"),
        "backoff_max_s: must be at least",
        id="backoff",
    ),
]


@pytest.mark.parametrize(("text", "key"), INVALID)
def test_an_invalid_file_fails_naming_the_file_and_the_key(
    tmp_path: Path, text: str, key: str
) -> None:
    path = write(tmp_path, text)
    message = problems_of(path)
    assert f"{path}: {key}" in message, message


def test_every_problem_of_a_file_is_reported(tmp_path: Path) -> None:
    text = _with("unit = 2", "unit = 300")
    text = text.replace('parity = "E"', 'parity = "X"').replace("port = 5020", "port = -1")
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    assert isinstance(info.value, EdgeError)
    keys = sorted(problem.split(":")[0] for problem in info.value.problems)
    assert keys == ["buses[0].port", "buses[1].parity", "meters[1].unit"]


def test_a_file_that_is_not_toml_or_missing_fails_naming_it(tmp_path: Path) -> None:
    path = write(tmp_path, "gateway_id = \n")
    assert problems_of(path).startswith(f"{path}: not valid TOML")
    missing = tmp_path / "nope.toml"
    assert problems_of(missing).startswith(f"{missing}: cannot read")


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGS_EDGE_MQTT__URL", "mqtts://broker.example:8884")
    monkeypatch.setenv("SEGS_EDGE_WINDOW_SECONDS", "10")
    monkeypatch.setenv("SEGS_EDGE_POLL_INTERVAL_S", "0.5")
    settings = load_settings(write(tmp_path, EXAMPLE))
    assert settings.window_seconds == 10
    assert settings.poll_interval_s == 0.5
    assert (settings.mqtt.host, settings.mqtt.port, settings.mqtt.tls) == (
        "broker.example",
        8884,
        True,
    )
    # The rest of [mqtt] still comes from the file.
    assert settings.mqtt.username == "gw-pune-west-01"


def test_a_bad_environment_value_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGS_EDGE_WINDOW_SECONDS", "7")
    message = problems_of(write(tmp_path, EXAMPLE))
    assert "window_seconds: must divide 86400" in message
    monkeypatch.setenv("SEGS_EDGE_WINDOW_SECONDS", "soon")
    message = problems_of(write(tmp_path, EXAMPLE))
    assert "window_seconds: " in message
    assert "SEGS_EDGE_WINDOW_SECONDS" in message


def test_paths_are_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "site"
    (folder / "profiles").mkdir(parents=True)
    shipped = resources.files("segs.protocol") / "device_profiles" / "sdm120.toml"
    custom = shipped.read_text(encoding="utf-8").replace('id = "sdm120"', 'id = "my-sdm120"')
    (folder / "profiles" / "my-sdm120.toml").write_text(custom, encoding="utf-8")
    (folder / "ca.pem").write_text("not checked here", encoding="utf-8")
    text = _with('profile = "sdm120"', 'profile = "profiles/my-sdm120.toml"')
    text = text.replace('"mqtt://127.0.0.1:1883"', '"mqtts://broker:8883"\nca_file = "ca.pem"')
    text = text.replace('data_dir = "/var/lib/segs-edge"', 'data_dir = "state"')
    path = write(folder, text)
    monkeypatch.chdir(tmp_path)  # anywhere but the config's folder
    settings = load_settings(path)
    assert settings.meters[1].load_profile().id == "my-sdm120"
    assert settings.mqtt.ca_file == folder / "ca.pem"
    assert settings.data_dir == folder / "state"
    message = problems_of(write(folder, text.replace("my-sdm120.toml", "gone.toml")))
    assert "meters[1].profile: " in message
    assert "gone.toml" in message


def test_settings_built_in_code_validate_too() -> None:
    with pytest.raises(ValueError, match="no bus is named"):
        EdgeSettings(
            gateway_id="gw-1",
            region="r",
            buses=[TcpBus(kind="tcp", name="a", host="h")],
            meters=[{"id": "m1", "profile": "sdm630", "bus": "b", "unit": 1}],
        )
