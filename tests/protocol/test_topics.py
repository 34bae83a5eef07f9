"""Topic builders and parsers, and the id rules."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segs.protocol import (
    InvalidIdError,
    Topic,
    TopicError,
    TopicKind,
    build_topic,
    gateway_topic,
    hub_state_topic,
    live_subscription,
    live_topic,
    parse_topic,
    subscription,
    validate_id,
)
from segs.protocol.limits import MAX_ID_LENGTH
from segs.protocol.topics import GATEWAY_KINDS, LIVE_KINDS, topic_pattern

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@~-]{0,63}", fullmatch=True)


@given(kind=st.sampled_from(sorted(GATEWAY_KINDS)), gateway=ids)
def test_gateway_topics_round_trip(kind: TopicKind, gateway: str) -> None:
    topic = gateway_topic(gateway, kind)
    assert parse_topic(topic) == Topic(kind, gateway_id=gateway)
    assert str(parse_topic(topic)) == topic


@given(kind=st.sampled_from(sorted(LIVE_KINDS)), region=ids)
def test_live_topics_round_trip(kind: TopicKind, region: str) -> None:
    topic = live_topic(kind, region)
    assert parse_topic(topic) == Topic(kind, region=region)
    assert build_topic(kind, region=region) == topic


def test_the_topic_tree_is_the_one_in_the_design() -> None:
    assert gateway_topic("gw-1", TopicKind.WINDOWS) == "segs/v1/gw/gw-1/windows"
    assert gateway_topic("gw-1", TopicKind.COMMAND) == "segs/v1/gw/gw-1/cmd"
    assert hub_state_topic() == "segs/v1/hub/state"
    assert live_topic(TopicKind.LIVE_TARIFF, "Pune-West") == "segs/v1/live/tariffs/Pune-West"
    assert parse_topic("segs/v1/hub/state") == Topic(TopicKind.HUB_STATE)
    for kind in TopicKind:
        example = topic_pattern(kind).format(gateway_id="g", region="r")
        assert parse_topic(example).kind == kind


def test_subscriptions_match_every_gateway_and_can_be_shared() -> None:
    assert subscription(TopicKind.WINDOWS) == "segs/v1/gw/+/windows"
    assert (
        subscription(TopicKind.EVENTS, share_group="segs-hub")
        == "$share/segs-hub/segs/v1/gw/+/events"
    )
    assert subscription(TopicKind.LIVE_ALERT) == "segs/v1/live/alerts/+"
    assert subscription(TopicKind.HUB_STATE) == "segs/v1/hub/state"
    assert live_subscription() == "segs/v1/live/#"
    with pytest.raises(InvalidIdError):
        subscription(TopicKind.WINDOWS, share_group="a/b")


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "segs",
        "other/v1/gw/g1/windows",
        "segs/v2/gw/g1/windows",
        "SEGS/v1/gw/g1/windows",
        "segs/v1/gw/g1/unknown",
        "segs/v1/gw/g1/Windows",
        "segs/v1/gw/+/windows",
        "segs/v1/gw/#",
        "segs/v1/gw//windows",
        "segs/v1/gw/g1/windows/extra",
        "segs/v1/gw/g1",
        "$share/g/segs/v1/gw/g1/windows",
        "/segs/v1/gw/g1/windows",
        "segs/v1/live/load/a b",
        "segs/v1/live/prices/r1",
        "segs/v1/hub/state/x",
        "segs/v1/hub",
    ],
)
def test_foreign_and_malformed_topics_are_rejected(topic: str) -> None:
    with pytest.raises(TopicError):
        parse_topic(topic)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "empty"),
        ("a/b", "'/'"),
        ("a+b", "'+'"),
        ("a#", "'#'"),
        ("a b", "' '"),
        ("a\tb", "'\\t'"),
        ("a\x00b", "'\\x00'"),
        ("$SYS", "'$'"),
        ("-leading", "'-'"),
        ("é", "'é'"),
        ("x" * (MAX_ID_LENGTH + 1), "limit is 64"),
    ],
)
def test_invalid_ids_are_rejected_with_the_reason(value: str, problem: str) -> None:
    with pytest.raises(InvalidIdError, match=re.escape(problem)):
        validate_id(value, kind="meter id")
    with pytest.raises((InvalidIdError, TopicError)):
        gateway_topic(value, TopicKind.GATEWAY_BIRTH)


def test_valid_ids_are_kept_exactly() -> None:
    for value in ("MTR-00000001", "gw-pune-west-01", "Pune-West", "a.b_c:d@e~f", "x" * 64):
        assert validate_id(value) == value


def test_building_a_topic_of_the_wrong_family_fails() -> None:
    with pytest.raises(TopicError):
        gateway_topic("g1", TopicKind.LIVE_TARIFF)
    with pytest.raises(TopicError):
        live_topic(TopicKind.WINDOWS, "r1")
    with pytest.raises(TopicError):
        build_topic(TopicKind.WINDOWS)
