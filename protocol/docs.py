"""Render the generated parts of ``docs/protocol.md`` from the models, examples and limits.

The document has hand-written prose and generated blocks between
``<!-- generated:NAME -->`` and ``<!-- end:NAME -->`` markers. :func:`update`
rewrites the blocks; a test fails when the committed document differs from its
update, so models, examples and docs cannot drift apart.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import json
import re
from collections.abc import Iterator
from importlib import resources
from types import ModuleType
from typing import Any, Final

from pydantic import BaseModel

from segs.protocol import errors, limits, messages
from segs.protocol.codec import decode_message
from segs.protocol.contract import SPECS, TopicSpec

_BLOCK: Final = re.compile(r"(<!-- generated:(\w+) -->\n)(.*?)(<!-- end:\2 -->)", re.DOTALL)


def attribute_docs(owner: ModuleType | type) -> dict[str, str]:
    """Docstrings written under assignments (``X = 1`` then a string) in a module or class."""
    tree = ast.parse(inspect.getsource(owner))
    body = tree.body
    if isinstance(owner, type):
        body = next(
            node.body
            for node in ast.walk(tree)
            if isinstance(node, ast.ClassDef) and node.name == owner.__name__
        )
    docs: dict[str, str] = {}
    for node, after in itertools.pairwise(body):
        target = None
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            target = node.targets[0].id
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            target = node.target.id
        if (
            target is not None
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[target] = " ".join(after.value.value.split())
    return docs


def example_text(spec: TopicSpec) -> str:
    """The example payload file of ``spec``, as shipped in the package."""
    return (resources.files("segs.protocol") / "examples" / spec.example).read_text("utf-8")


def _type_of(prop: dict[str, Any]) -> str:
    if "$ref" in prop:
        name = prop["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in prop:
        options = [p for p in prop["anyOf"] if p.get("type") != "null"]
        text = " or ".join(_type_of(p) for p in options)
        return f"{text} or absent" if len(options) < len(prop["anyOf"]) else text
    if "oneOf" in prop:
        return " or ".join(_type_of(p) for p in prop["oneOf"])
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    if "enum" in prop:
        return "one of " + ", ".join(f"`{v}`" for v in prop["enum"])
    kind = str(prop.get("type", "any"))
    if kind == "array":
        return f"list of {_type_of(prop.get('items', {}))}"
    if kind == "object":
        values = prop.get("additionalProperties")
        return f"object of {_type_of(values)}" if isinstance(values, dict) else "object"
    if prop.get("format") == "date-time":
        return "UTC time"
    if prop.get("format") == "id":
        return "[id](#transport)"
    return kind


def _constraints(prop: dict[str, Any]) -> str:
    parts = []
    for key, text in (
        ("minimum", ">= {}"),
        ("exclusiveMinimum", "> {}"),
        ("maximum", "<= {}"),
        ("exclusiveMaximum", "< {}"),
        ("minItems", "at least {} items"),
        ("maxItems", "at most {} items"),
        ("minLength", "at least {} chars"),
        ("maxLength", "at most {} chars"),
        ("maxProperties", "at most {} entries"),
        ("pattern", "matches `{}`"),
    ):
        if key in prop:
            parts.append(text.format(prop[key]))
    parts.extend(_constraints(option) for option in prop.get("anyOf", []))
    return ", ".join(p for p in parts if p)


def _field_table(schema: dict[str, Any]) -> list[str]:
    rows = ["| field | type | required | bounds | meaning |", "|---|---|---|---|---|"]
    required = {*schema.get("required", ()), "v"}  # v has a default in code, not on the wire
    for name, prop in schema.get("properties", {}).items():
        kind = _type_of(prop).replace("|", "/")
        bounds = _constraints(prop).replace("|", "/")
        needed = "yes" if name in required else "no"
        rows.append(f"| `{name}` | {kind} | {needed} | {bounds} | {prop.get('description', '')} |")
    return rows


def _model_section(model: type[BaseModel], schema: dict[str, Any], level: str) -> list[str]:
    doc = " ".join((model.__doc__ or "").split())
    return [f"{level} {model.__name__}", "", doc, "", *_field_table(schema), ""]


def _variants(payload: Any) -> list[type[BaseModel]]:
    if isinstance(payload, type) and issubclass(payload, BaseModel):
        return [payload]
    args = getattr(payload, "__metadata__", None) and payload.__origin__
    return list(getattr(args, "__args__", ()))


def render_messages() -> str:
    """One section per topic's payload, then the nested models they use."""
    lines: list[str] = []
    nested: dict[str, dict[str, Any]] = {}
    for spec in SPECS.values():
        lines += [f"### `{spec.pattern}`", "", spec.summary + ".", ""]
        for model in _variants(spec.payload):
            schema = model.model_json_schema()
            nested.update(schema.get("$defs", {}))
            lines += _model_section(model, schema, "####")
        lines += ["Example:", "", "```json", example_text(spec).rstrip(), "```", ""]
    lines += ["### Nested objects", ""]
    event_variants = _variants(messages.MeterEvent)
    for name in sorted(nested):
        found: object = getattr(messages, name, None)
        if not (isinstance(found, type) and issubclass(found, BaseModel)):
            continue
        lines += _model_section(found, nested[name], "####")
        if found is messages.Window:
            flags = attribute_docs(messages.QualityFlag)
            lines += ["Quality flags:", ""]
            lines += [
                f"- `{flag.value}`: {flags.get(flag.name, '')}" for flag in messages.QualityFlag
            ]
            lines += [""]
    for model in event_variants:
        if model.__name__ not in nested:
            lines += _model_section(model, model.model_json_schema(), "####")
    return "\n".join(lines).rstrip() + "\n"


def render_topics() -> str:
    """The topic table."""
    rows = [
        "| topic | from → to | QoS | retained | payload | what |",
        "|---|---|---|---|---|---|",
    ]
    for spec in SPECS.values():
        names = " or ".join(m.__name__ for m in _variants(spec.payload))
        rows.append(
            f"| `{spec.pattern}` | {spec.sender} → {spec.receiver} | {spec.qos} |"
            f" {'yes' if spec.retained else 'no'} | {names} | {spec.summary} |"
        )
    return "\n".join(rows) + "\n"


def render_reasons() -> str:
    """The decode failure reason codes."""
    docs = attribute_docs(errors.Reason)
    rows = ["| reason | meaning |", "|---|---|"]
    rows += [f"| `{r.value}` | {docs.get(r.name, '')} |" for r in errors.Reason]
    return "\n".join(rows) + "\n"


def render_limits() -> str:
    """The protocol limits."""
    docs = attribute_docs(limits)
    rows = ["| limit | value | meaning |", "|---|---|---|"]
    for name, value in vars(limits).items():
        if name.isupper():
            shown = value.isoformat() if hasattr(value, "isoformat") else repr(value)
            rows.append(f"| `{name}` | `{shown}` | {docs.get(name, '')} |")
    return "\n".join(rows) + "\n"


def render_enums() -> str:
    """The enumerations used in payloads."""
    enums = (
        messages.EventKind,
        messages.CommandKind,
        messages.ConnectionState,
        messages.AlertType,
        messages.Severity,
        messages.AlertStatus,
    )
    lines = [f"- **{enum.__name__}**: " + ", ".join(f"`{e.value}`" for e in enum) for enum in enums]
    return "\n".join(lines) + "\n"


def render_profiles() -> str:
    """The shipped device profiles and their read plans."""
    from segs.protocol import profiles  # noqa: PLC0415 - keeps docs importable without the data

    rows = [
        "| profile | device | phases | registers | reads (FC, address, count) |",
        "|---|---|---|---|---|",
    ]
    for name in profiles.shipped_profiles():
        prof = profiles.load_profile(name)
        reads = " · ".join(f"FC{b.function_code:02d} {b.address}+{b.count}" for b in prof.blocks)
        rows.append(
            f"| `{prof.id}` | {prof.manufacturer} {prof.model} | {prof.phases} |"
            f" {len(prof.registers)} | {reads} |"
        )
    return "\n".join(rows) + "\n"


SECTIONS: Final = {
    "topics": render_topics,
    "messages": render_messages,
    "enums": render_enums,
    "reasons": render_reasons,
    "limits": render_limits,
    "profiles": render_profiles,
}


def _blocks(text: str) -> Iterator[str]:
    for match in _BLOCK.finditer(text):
        yield match.group(2)


def update(text: str) -> str:
    """Return ``text`` with every generated block re-rendered; unknown blocks raise ValueError."""
    unknown = set(_blocks(text)) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown generated blocks: {', '.join(sorted(unknown))}")
    missing = set(SECTIONS) - set(_blocks(text))
    if missing:
        raise ValueError(f"missing generated blocks: {', '.join(sorted(missing))}")
    return _BLOCK.sub(lambda m: f"{m.group(1)}{SECTIONS[m.group(2)]()}{m.group(4)}", text)


def check_examples() -> None:
    """Decode every shipped example on its topic; raise DecodeError on the first bad one."""
    for spec in SPECS.values():
        decode_message(example_topic(spec), example_text(spec).encode())


def example_topic(spec: TopicSpec) -> str:
    """The topic the example of ``spec`` is published on."""
    return spec.pattern.format(gateway_id="gw-pune-west-01", region="Pune-West")
