"""MQTT topics: the only place a SEGS topic string is spelled.

Every topic is built by a function here and parsed by :func:`parse_topic`; edge
and hub never format a topic themselves (a test enforces it).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from segs.protocol.errors import InvalidIdError, TopicError
from segs.protocol.ids import validate_id

ROOT: Final = "segs/v1"
"""Every SEGS topic starts with this; ``v1`` is the topic-tree version."""

SHARE_PREFIX: Final = "$share"


class TopicKind(StrEnum):
    """Every kind of SEGS topic."""

    GATEWAY_BIRTH = "gateway_birth"
    GATEWAY_STATE = "gateway_state"
    WINDOWS = "windows"
    EVENTS = "events"
    ACK = "ack"
    COMMAND = "command"
    HUB_STATE = "hub_state"
    LIVE_REGION_LOAD = "live_region_load"
    LIVE_TARIFF = "live_tariff"
    LIVE_ALERT = "live_alert"


# The last level of gateway topics, per kind.
_GATEWAY_LEVELS: Final = {
    TopicKind.GATEWAY_BIRTH: "birth",
    TopicKind.GATEWAY_STATE: "state",
    TopicKind.WINDOWS: "windows",
    TopicKind.EVENTS: "events",
    TopicKind.ACK: "ack",
    TopicKind.COMMAND: "cmd",
}
_GATEWAY_KINDS: Final = {level: kind for kind, level in _GATEWAY_LEVELS.items()}

# Live feeds: segs/v1/live/{feed}/{region}
_LIVE_LEVELS: Final = {
    TopicKind.LIVE_REGION_LOAD: "load",
    TopicKind.LIVE_TARIFF: "tariffs",
    TopicKind.LIVE_ALERT: "alerts",
}
_LIVE_KINDS: Final = {level: kind for kind, level in _LIVE_LEVELS.items()}

GATEWAY_KINDS: Final = frozenset(_GATEWAY_LEVELS)
"""Kinds whose topic names a gateway."""
LIVE_KINDS: Final = frozenset(_LIVE_LEVELS)
"""Kinds whose topic names a region."""


@dataclass(frozen=True)
class Topic:
    """A parsed SEGS topic."""

    kind: TopicKind
    gateway_id: str | None = None
    region: str | None = None

    def __str__(self) -> str:
        return build_topic(self.kind, gateway_id=self.gateway_id, region=self.region)


def gateway_topic(gateway_id: str, kind: TopicKind) -> str:
    """``segs/v1/gw/{gateway_id}/{birth|state|windows|events|ack|cmd}``."""
    level = _GATEWAY_LEVELS.get(kind)
    if level is None:
        raise TopicError(f"{kind.value} is not a gateway topic")
    return f"{ROOT}/gw/{validate_id(gateway_id, kind='gateway id')}/{level}"


def hub_state_topic() -> str:
    """``segs/v1/hub/state``: the hub's retained online/offline state."""
    return f"{ROOT}/hub/state"


def live_topic(kind: TopicKind, region: str) -> str:
    """``segs/v1/live/{load|tariffs|alerts}/{region}``."""
    level = _LIVE_LEVELS.get(kind)
    if level is None:
        raise TopicError(f"{kind.value} is not a live feed")
    return f"{ROOT}/live/{level}/{validate_id(region, kind='region')}"


def build_topic(
    kind: TopicKind, *, gateway_id: str | None = None, region: str | None = None
) -> str:
    """Build the topic of ``kind``; gateway topics need ``gateway_id``, live feeds ``region``."""
    if kind in GATEWAY_KINDS:
        if gateway_id is None:
            raise TopicError(f"{kind.value} topics need a gateway id")
        return gateway_topic(gateway_id, kind)
    if kind in LIVE_KINDS:
        if region is None:
            raise TopicError(f"{kind.value} topics need a region")
        return live_topic(kind, region)
    return hub_state_topic()


def subscription(kind: TopicKind, *, share_group: str | None = None) -> str:
    """The filter matching ``kind`` for every gateway or region.

    With ``share_group`` the filter is an MQTT shared subscription
    (``$share/{group}/...``), so several hub workers split the messages.
    """
    if kind in GATEWAY_KINDS:
        topic_filter = f"{ROOT}/gw/+/{_GATEWAY_LEVELS[kind]}"
    elif kind in LIVE_KINDS:
        topic_filter = f"{ROOT}/live/{_LIVE_LEVELS[kind]}/+"
    else:
        topic_filter = hub_state_topic()
    if share_group is None:
        return topic_filter
    return f"{SHARE_PREFIX}/{validate_id(share_group, kind='share group')}/{topic_filter}"


def live_subscription() -> str:
    """The filter matching every live feed: ``segs/v1/live/#``."""
    return f"{ROOT}/live/#"


def topic_pattern(kind: TopicKind) -> str:
    """The topic of ``kind`` with ``{gateway_id}`` or ``{region}`` placeholders, for docs."""
    if kind in GATEWAY_KINDS:
        return f"{ROOT}/gw/{{gateway_id}}/{_GATEWAY_LEVELS[kind]}"
    if kind in LIVE_KINDS:
        return f"{ROOT}/live/{_LIVE_LEVELS[kind]}/{{region}}"
    return hub_state_topic()


def parse_topic(topic: str) -> Topic:
    """Parse a SEGS topic; raise :class:`TopicError` for anything else.

    Wildcards, empty levels, foreign prefixes, unknown levels and invalid ids are
    all rejected, so a parsed topic can be trusted.
    """
    levels = topic.split("/")
    if len(levels) < 3 or f"{levels[0]}/{levels[1]}" != ROOT:
        raise TopicError(f"not a SEGS topic: {topic!r}")
    rest = levels[2:]
    try:
        if rest[0] == "gw" and len(rest) == 3 and rest[2] in _GATEWAY_KINDS:
            return Topic(
                _GATEWAY_KINDS[rest[2]], gateway_id=validate_id(rest[1], kind="gateway id")
            )
        if rest == ["hub", "state"]:
            return Topic(TopicKind.HUB_STATE)
        if rest[0] == "live" and len(rest) == 3 and rest[1] in _LIVE_KINDS:
            return Topic(_LIVE_KINDS[rest[1]], region=validate_id(rest[2], kind="region"))
    except InvalidIdError as exc:
        raise TopicError(f"malformed SEGS topic {topic!r}: {exc}") from exc
    raise TopicError(f"unknown SEGS topic: {topic!r}")
