"""Models, examples and docs/protocol.md must agree; no topic is spelled outside segs.protocol."""

from __future__ import annotations

import io
import json
import re
import tokenize
from pathlib import Path

import pytest

from segs.protocol import SPECS, decode_message, encode
from segs.protocol.docs import SECTIONS, example_text, example_topic, update

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "protocol" / "examples"
DOC = ROOT / "docs" / "protocol.md"


@pytest.mark.parametrize("spec", SPECS.values(), ids=lambda spec: spec.kind.value)
def test_each_example_is_a_valid_payload_of_its_topic(spec: object) -> None:
    from segs.protocol.contract import TopicSpec  # noqa: PLC0415

    assert isinstance(spec, TopicSpec)
    data = example_text(spec).encode()
    decoded = decode_message(example_topic(spec), data)
    # The example is exactly the canonical encoding, so it shows every field it should.
    assert json.loads(encode(decoded.payload)) == json.loads(data)


def test_there_is_one_example_per_message_type_and_no_stray_file() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.json")) == sorted(
        spec.example for spec in SPECS.values()
    )


def test_docs_protocol_md_is_generated_from_the_current_models() -> None:
    text = DOC.read_text("utf-8")
    assert update(text) == text, (
        "docs/protocol.md is stale: run 'segs protocol docs --write docs/protocol.md'"
    )


def test_docs_name_every_topic_field_and_example() -> None:
    text = DOC.read_text("utf-8")
    for spec in SPECS.values():
        assert f"`{spec.pattern}`" in text
        assert example_text(spec).strip() in text
    for name in ("window_start", "import_kwh", "import_delta_kwh", "samples_expected", "seqs"):
        assert f"`{name}`" in text
    assert set(re.findall(r"<!-- generated:(\w+) -->", text)) == set(SECTIONS)


def test_a_changed_model_makes_the_docs_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    from segs.protocol import docs  # noqa: PLC0415

    text = DOC.read_text("utf-8")
    monkeypatch.setitem(docs.SECTIONS, "limits", lambda: "| `MAX_SOMETHING` | `1` | new |\n")
    assert update(text) != text


_TOPIC_LITERAL = re.compile(r"segs/v1|/v1/(gw|hub|live)\b")


# Python 3.12 splits f-strings into parts; 3.11 has one STRING token.
_STRING_TOKENS = {tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}


def _python_files() -> list[Path]:
    skip = {".venv", ".git", "build", "dist", ".mypy-tree", "node_modules"}
    return [
        path for path in ROOT.rglob("*.py") if not skip.intersection(path.relative_to(ROOT).parts)
    ]


def _topic_literals(source: str) -> list[tuple[int, str]]:
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return [
        (tok.start[0], tok.string)
        for tok in tokens
        if tok.type in _STRING_TOKENS and _TOPIC_LITERAL.search(tok.string)
    ]


def test_no_topic_is_spelled_outside_segs_protocol() -> None:
    allowed = (ROOT / "protocol", ROOT / "tests" / "protocol")
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {literal}"
        for path in _python_files()
        if not any(path.is_relative_to(folder) for folder in allowed)
        for line, literal in _topic_literals(path.read_text("utf-8"))
    ]
    assert not offenders, "build topics with segs.protocol.topics instead:\n" + "\n".join(offenders)


def test_the_topic_literal_check_catches_what_it_should() -> None:
    bad = 'topic = f"segs/v1/gw/{gw}/windows"\nother = "x/v1/live/tariffs"\n'
    assert [line for line, _ in _topic_literals(bad)] == [1, 2]
    assert _topic_literals("# segs/v1 in a comment is prose\nx = 1\n") == []
