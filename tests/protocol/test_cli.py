"""``segs protocol``: what an integrator sees when checking a payload or a profile."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from segs.cli import main
from segs.protocol import SPECS, TopicKind
from segs.protocol.docs import example_text

ROOT = Path(__file__).resolve().parents[2]


def test_check_accepts_a_valid_payload_and_prints_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = tmp_path / "windows.json"
    payload.write_text(example_text(SPECS[TopicKind.WINDOWS]))
    assert main(["protocol", "check", "segs/v1/gw/gw-pune-west-01/windows", str(payload)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("valid WindowBatch on windows\n")
    assert json.loads(out.split("\n", 1)[1])["seq"] == 1042


def test_check_names_the_reason_of_a_bad_payload(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = tmp_path / "bad.json"
    payload.write_text(
        '{"v": 1, "gateway_id": "gw-1", "seqs": [0], "acked_at": "2026-01-01T00:00:00Z"}'
    )
    assert main(["protocol", "check", "segs/v1/gw/gw-1/ack", str(payload)]) == 1
    assert capsys.readouterr().out.startswith("invalid: out_of_range: ack: seqs.0:")
    assert main(["protocol", "check", "segs/v1/gw/gw-2/ack", str(payload)]) == 1
    assert "invalid: out_of_range" in capsys.readouterr().out
    assert main(["protocol", "check", "not/a/segs/topic", str(payload)]) == 1
    assert capsys.readouterr().out.startswith("invalid: unknown_topic:")


def test_profiles_lists_and_shows_read_plans(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["protocol", "profiles"]) == 0
    listing = capsys.readouterr().out
    for name in ("sdm630", "sdm120", "sunspec203"):
        assert name in listing
    assert main(["protocol", "profiles", "sdm630"]) == 0
    plan = capsys.readouterr().out
    assert "read FC04 address 0 count" in plan
    assert "52  float32  power_total [kW]" in plan
    assert main(["protocol", "profiles", "no-such-profile"]) == 1
    assert "no-such-profile" in capsys.readouterr().err


def test_docs_check_spots_a_stale_document(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = tmp_path / "protocol.md"
    shutil.copy(ROOT / "docs" / "protocol.md", doc)
    assert main(["protocol", "docs", "--check", str(doc)]) == 0
    doc.write_text(doc.read_text().replace("| `too_large` |", "| `too_big` |"))
    assert main(["protocol", "docs", "--check", str(doc)]) == 1
    assert "stale" in capsys.readouterr().err
    assert main(["protocol", "docs", "--write", str(doc)]) == 0
    assert doc.read_text() == (ROOT / "docs" / "protocol.md").read_text()
