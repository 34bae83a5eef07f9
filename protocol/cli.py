"""``segs protocol``: check payloads against the contract, list device profiles, render docs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from segs.protocol import docs
from segs.protocol.codec import decode_message, encode
from segs.protocol.errors import DecodeError, ProfileError


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The ``segs protocol`` argument parser."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    check = sub.add_parser(
        "check",
        help="decode a payload as received on TOPIC and report what is wrong with it",
        description="Exit 0 and print the normalised payload when it is valid; exit 1 and "
        "print the reason code and message when it is not (what the hub dead-letters).",
    )
    check.add_argument("topic", help="the MQTT topic the payload arrives on")
    check.add_argument("file", nargs="?", type=Path, help="payload file (default: standard input)")

    profiles = sub.add_parser(
        "profiles", help="list the shipped Modbus device profiles, or show one with its read plan"
    )
    profiles.add_argument("profile", nargs="?", help="a shipped profile id or a .toml file")

    render = sub.add_parser("docs", help="regenerate the generated blocks of docs/protocol.md")
    mode = render.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the file in place")
    mode.add_argument("--check", action="store_true", help="exit 1 when the file is stale")
    render.add_argument("file", type=Path, help="path of docs/protocol.md")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run one ``segs protocol`` action."""
    if args.action == "check":
        return _check(args.topic, args.file)
    if args.action == "profiles":
        return _profiles(args.profile)
    return _docs(args.file, write=args.write, check=args.check)


def _check(topic: str, file: Path | None) -> int:
    data = file.read_bytes() if file is not None else sys.stdin.buffer.read()
    try:
        decoded = decode_message(topic, data)
    except DecodeError as exc:
        print(f"invalid: {exc.reason.value}: {exc.message}")
        return 1
    print(f"valid {type(decoded.payload).__name__} on {decoded.topic.kind.value}")
    print(json.dumps(json.loads(encode(decoded.payload)), indent=2))
    return 0


def _profiles(name: str | None) -> int:
    from segs.protocol import profiles  # noqa: PLC0415 - only this action needs the profile files

    if name is None:
        for profile_id in profiles.shipped_profiles():
            profile = profiles.load_profile(profile_id)
            print(
                f"{profile.id:<12} {profile.manufacturer} {profile.model}, "
                f"{profile.phases}-phase, {len(profile.registers)} registers "
                f"in {len(profile.blocks)} reads"
            )
        return 0
    try:
        profile = profiles.load_profile(name)
    except (ProfileError, OSError) as exc:
        print(f"segs protocol profiles: {exc}", file=sys.stderr)
        return 1
    print(f"{profile.id}: {profile.manufacturer} {profile.model} ({profile.reference})")
    for block in profile.blocks:
        print(f"read FC{block.function_code:02d} address {block.address} count {block.count}:")
        for reg in block.registers:
            unit = f" [{reg.unit}]" if reg.unit else ""
            print(f"  {reg.address:>5}  {reg.type.value:<8} {reg.name}{unit}")
    return 0


def _docs(file: Path, *, write: bool, check: bool) -> int:
    current = file.read_text("utf-8")
    fresh = docs.update(current)
    if write:
        file.write_text(fresh, "utf-8")
        print(f"wrote {file}")
        return 0
    if check:
        if fresh != current:
            print(f"{file} is stale: run 'segs protocol docs --write {file}'", file=sys.stderr)
            return 1
        print(f"{file} is up to date")
        return 0
    sys.stdout.write(fresh)
    return 0
