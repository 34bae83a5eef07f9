"""docs/simulator.md keeps up with the code: every option, endpoint and fault kind, and its example
config is valid."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from simtools import sim_config

from segs.sim.app import Simulator
from segs.sim.cli import build_parser
from segs.sim.config import parse_config
from segs.sim.control import create_app
from segs.sim.faults import FAULT_KINDS

DOC = Path(__file__).resolve().parents[2] / "docs" / "simulator.md"


def _text() -> str:
    return DOC.read_text(encoding="utf-8")


def test_every_command_line_option_is_documented() -> None:
    text = _text()
    options = [
        option
        for action in build_parser("segs sim")._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    ]
    assert options
    missing = [option for option in options if f"`{option}" not in text]
    assert not missing, f"docs/simulator.md does not mention {missing}"


def test_every_endpoint_and_fault_kind_is_documented() -> None:
    text = _text()
    schema = create_app(Simulator(sim_config(1))).openapi()
    routes = [
        f"{method.upper()} {path}"
        for path, methods in schema["paths"].items()
        for method in methods
    ]
    assert len(routes) == 8
    missing = [route for route in routes if f"`{route}`" not in text]
    assert not missing, f"docs/simulator.md does not document {missing}"
    assert all(f"| `{kind}` |" in text for kind in FAULT_KINDS)


def test_the_example_config_is_valid() -> None:
    blocks = re.findall(r"```toml\n(.*?)```", _text(), flags=re.DOTALL)
    assert len(blocks) == 1
    config = parse_config(tomllib.loads(blocks[0]), base=Path("/srv/sim"))
    assert [m.id for m in config.meters] == ["house-1", "house-2"]
    assert config.state_file == Path("/srv/sim/sim-state.json")
