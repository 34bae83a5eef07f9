"""docs/hub.md names every setting, command, dead-letter reason and table of the hub."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from segs.hub.cli import build_parser
from segs.hub.db import metadata
from segs.hub.settings import ENV_PREFIX, HubSettings
from segs.hub.store import HubReason

ROOT = Path(__file__).resolve().parents[2]
GUIDE = (ROOT / "docs" / "hub.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(HubSettings.model_fields))
def test_every_setting_is_documented_with_its_variable(name: str) -> None:
    assert f"`{name}`" in GUIDE or f"`{name}`," in GUIDE
    assert f"{ENV_PREFIX}{name.upper()}" in GUIDE


def test_every_command_is_documented() -> None:
    parser = build_parser("segs hub")
    (actions,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for action in actions.choices:
        assert f"`segs hub {action}" in GUIDE, action


@pytest.mark.parametrize("reason", list(HubReason))
def test_every_hub_reason_is_documented(reason: HubReason) -> None:
    assert f"| `{reason.value}` |" in GUIDE


@pytest.mark.parametrize("table", sorted(metadata.tables))
def test_every_table_is_documented(table: str) -> None:
    assert f"`{table}`" in GUIDE


def test_the_benchmarks_page_has_the_hub_ingest_section() -> None:
    page = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    assert "## Hub ingest" in page
    assert "benchmarks/hub_ingest.py" in page


def test_every_api_endpoint_is_in_the_api_guide() -> None:
    from segs.hub.api import API_PREFIX, create_app  # noqa: PLC0415

    guide = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    paths = create_app(HubSettings(database_url="sqlite:///unused.db")).openapi()["paths"]
    assert len(paths) > 20
    for path, operations in paths.items():
        for method in operations:
            shown = f"`{method.upper()} {path.removeprefix(API_PREFIX)}"
            assert shown in guide, shown
