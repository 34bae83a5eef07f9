"""``segs sim``: arguments, and a real process that serves, answers and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from services import free_port
from simtools import modbus_client, read_profile

from segs.cli import main
from segs.protocol.profiles import load_profile
from segs.sim.cli import build_parser, config_from_args
from segs.sim.exceptions import ConfigError
from segs.sim.state import load_state


def _args(*argv: str) -> object:
    return build_parser("segs sim").parse_args(list(argv))


def test_quick_start_arguments_build_the_quick_config(tmp_path: Path) -> None:
    config = config_from_args(
        _args("--meters", "300", "--port", "5020", "--profile", "mixed", "--seed", "9",
              "--control-port", "3999", "--state", str(tmp_path / "s.json"), "--interval", "0.5")
    )  # fmt: skip
    assert [b.port for b in config.buses] == [5020, 5021]
    assert config.seed == 9
    assert config.control.port == 3999
    assert config.state_file == tmp_path / "s.json"
    assert config.update_interval == 0.5
    assert config.meters[2].profile == "sunspec203"


def test_the_config_file_form_takes_overrides_but_not_quick_start_options(tmp_path: Path) -> None:
    path = tmp_path / "sim.toml"
    path.write_text(
        '[[regions]]\nid = "r"\n[[buses]]\nid = "b"\nport = 5020\n'
        '[[meters]]\nid = "m"\nbus = "b"\nunit_id = 1\nprofile = "sdm120"\nregion = "r"\n'
    )
    config = config_from_args(_args("--config", str(path), "--seed", "4", "--no-control"))
    assert config.seed == 4
    assert not config.control.enabled
    with pytest.raises(ConfigError, match="--meters, --profile cannot be combined with --config"):
        config_from_args(_args("--config", str(path), "--meters", "3", "--profile", "sdm120"))
    with pytest.raises(ConfigError, match="give --meters and --port"):
        config_from_args(_args("--meters", "3"))


def test_bad_arguments_exit_2_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--meters", "0", "--port", "5020"]) == 2
    assert "segs sim: error: meters: must be 1..100000, got 0" in capsys.readouterr().err
    assert main(["sim", "--port", "5020"]) == 2
    assert main([]) == 2
    assert "sim" in capsys.readouterr().out


async def _wait_ready(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    lines = []
    while True:
        line = (await process.stdout.readline()).decode()
        assert line, "segs sim exited before it was ready:\n" + "".join(lines)
        lines.append(line)
        if line.strip() == "ready":
            return "".join(lines)


async def test_segs_sim_serves_until_sigterm_and_saves_its_state(tmp_path: Path) -> None:
    port, control = free_port(), free_port()
    state = tmp_path / "state.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "segs", "sim", "--meters", "4", "--port", str(port),
        "--profile", "mixed", "--control-port", str(control), "--state", str(state),
        "--log-level", "warning",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        banner = await _wait_ready(process)
        assert f"bus-1: modbus tcp 127.0.0.1:{port}, unit ids 1..4 (4 meters)" in banner
        assert f"control API: http://127.0.0.1:{control}" in banner
        async with modbus_client(port) as client:
            values = await read_profile(client, load_profile("sunspec203"), 3)
            assert values["serial_number"] == "MTR-00000003"
        async with httpx.AsyncClient(timeout=5.0) as http:
            meters = (await http.get(f"http://127.0.0.1:{control}/meters")).json()
            assert len(meters) == 4
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    assert "segs sim: stopped" in stdout.decode()
    assert set(load_state(state)) == {f"MTR-{n:08d}" for n in range(1, 5)}
