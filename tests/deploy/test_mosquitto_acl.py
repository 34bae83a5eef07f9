"""deploy/mosquitto: the ACL matches segs.protocol and really confines each gateway."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from pathlib import Path

import aiomqtt
import pytest
from services import MosquittoBroker, MosquittoFactory

from segs.protocol import SPECS, TopicKind, gateway_topic, subscription
from segs.protocol.topics import (
    GATEWAY_KINDS,
    ROOT,
    hub_state_topic,
    live_subscription,
    topic_pattern,
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"


def _acl_rules(section: str | None = None) -> set[tuple[str, str]]:
    """``(access, topic)`` of the ``pattern`` lines, or of one user's ``topic`` lines."""
    rules, user = set(), None
    for line in (DEPLOY / "acl").read_text().splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "user":
            user = words[1]
        elif (words[0] == "pattern" and section is None) or (
            words[0] == "topic" and user == section
        ):
            rules.add((words[1], words[2]))
    return rules


def test_gateway_patterns_are_exactly_the_protocol_topics() -> None:
    def own(kind: TopicKind) -> str:
        return topic_pattern(kind).replace("{gateway_id}", "%u")

    sent = {k for k in GATEWAY_KINDS if SPECS[k].sender.startswith("edge")}
    received = GATEWAY_KINDS - sent
    expected = {("write", own(k)) for k in sent} | {("read", own(k)) for k in received}
    expected |= {("read", hub_state_topic()), ("read", live_subscription())}
    assert _acl_rules() == expected
    assert _acl_rules("segs-hub") == {("readwrite", f"{ROOT}/#")}


@pytest.fixture
def secured_broker(mosquitto_factory: MosquittoFactory, tmp_path: Path) -> MosquittoBroker:
    passwd = tmp_path / "passwd"
    passwd.touch()
    for user in ("segs-hub", "gw-1", "gw-2"):
        subprocess.run(
            ["mosquitto_passwd", "-b", str(passwd), user, f"{user}-secret"],
            check=True,
            capture_output=True,
        )
    passwd.chmod(0o600)
    return mosquitto_factory(
        extra_config=[
            "allow_anonymous false",
            f"password_file {passwd}",
            f"acl_file {DEPLOY / 'acl'}",
        ]
    )


def _client(broker: MosquittoBroker, user: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        broker.host,
        broker.port,
        username=user,
        password=f"{user}-secret",
        identifier=f"test-{user}",
        protocol=aiomqtt.ProtocolVersion.V5,
    )


async def test_a_gateway_can_publish_only_as_itself(secured_broker: MosquittoBroker) -> None:
    async with asyncio.timeout(20), _client(secured_broker, "segs-hub") as hub:
        await hub.subscribe(subscription(TopicKind.WINDOWS, share_group="segs-hub"), qos=1)
        async with _client(secured_broker, "gw-1") as gw:
            spoofed = gateway_topic("gw-2", TopicKind.WINDOWS)
            # An MQTT 5 broker may answer "not authorized" in the PUBACK.
            with contextlib.suppress(aiomqtt.MqttCodeError):
                await gw.publish(spoofed, b"spoofed", qos=1)
            await gw.publish(gateway_topic("gw-1", TopicKind.WINDOWS), b"genuine", qos=1)
        received = []
        async for message in hub.messages:
            received.append((str(message.topic), message.payload))
            if message.payload == b"genuine":
                break
        assert received == [(gateway_topic("gw-1", TopicKind.WINDOWS), b"genuine")]


async def test_a_gateway_reads_its_acks_but_not_another_gateways(
    secured_broker: MosquittoBroker,
) -> None:
    async with asyncio.timeout(20), _client(secured_broker, "gw-1") as gw:
        await gw.subscribe(gateway_topic("gw-1", TopicKind.ACK), qos=1)
        await gw.subscribe(gateway_topic("gw-2", TopicKind.ACK), qos=1)
        await gw.subscribe(hub_state_topic(), qos=1)
        async with _client(secured_broker, "segs-hub") as hub:
            await hub.publish(gateway_topic("gw-2", TopicKind.ACK), b"not yours", qos=1)
            await hub.publish(gateway_topic("gw-1", TopicKind.ACK), b"yours", qos=1)
            await hub.publish(hub_state_topic(), b"online", qos=1)
        received = []
        async for message in gw.messages:
            received.append(message.payload)
            if message.payload == b"online":
                break
        assert received == [b"yours", b"online"]


async def test_anonymous_clients_are_refused(secured_broker: MosquittoBroker) -> None:
    client = aiomqtt.Client(secured_broker.host, secured_broker.port)
    with pytest.raises(aiomqtt.MqttError):
        async with asyncio.timeout(10), client:
            pass
