"""Which payload travels on which topic, with which QoS and retain flag.

This table drives the codec (:func:`segs.protocol.codec.decode_message`), the
examples check and the generated part of ``docs/protocol.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from pydantic import TypeAdapter

from segs.protocol import messages as m
from segs.protocol.topics import TopicKind, topic_pattern


@dataclass(frozen=True)
class TopicSpec:
    """The contract of one kind of topic."""

    kind: TopicKind
    sender: str
    receiver: str
    qos: int
    retained: bool
    payload: Any
    """The payload type: a ``Message`` subclass or an annotated union of them."""
    example: str
    """File name under ``protocol/examples/`` of a valid example payload."""
    summary: str

    @property
    def pattern(self) -> str:
        """The topic with ``{gateway_id}`` or ``{region}`` placeholders."""
        return topic_pattern(self.kind)

    @property
    def adapter(self) -> TypeAdapter[Any]:
        """A cached pydantic adapter validating this topic's payloads."""
        return _ADAPTERS[self.kind]


SPECS: Final[dict[TopicKind, TopicSpec]] = {
    spec.kind: spec
    for spec in (
        TopicSpec(
            TopicKind.GATEWAY_BIRTH,
            "edge",
            "hub",
            1,
            True,
            m.GatewayBirth,
            "gateway_birth.json",
            "who the gateway is, its meters and outbox state; sent on every connect",
        ),
        TopicSpec(
            TopicKind.GATEWAY_STATE,
            "edge (broker for the will)",
            "hub",
            1,
            True,
            m.GatewayState,
            "gateway_state.json",
            "`online` on every connect; `offline` as the MQTT will",
        ),
        TopicSpec(
            TopicKind.WINDOWS,
            "edge",
            "hub",
            1,
            False,
            m.WindowBatch,
            "windows.json",
            "a batch of minute windows, kept in the edge outbox until acknowledged",
        ),
        TopicSpec(
            TopicKind.EVENTS,
            "edge",
            "hub",
            1,
            False,
            m.EventBatch,
            "events.json",
            "immediate meter events, kept in the edge outbox until acknowledged",
        ),
        TopicSpec(
            TopicKind.ACK,
            "hub",
            "edge",
            1,
            False,
            m.Ack,
            "ack.json",
            "the seqs the hub has committed (or dead-lettered); the edge deletes them",
        ),
        TopicSpec(
            TopicKind.COMMAND,
            "hub",
            "edge",
            1,
            False,
            m.Command,
            "command.json",
            "commands to one gateway: resend a seq range, reload config",
        ),
        TopicSpec(
            TopicKind.HUB_STATE,
            "hub (broker for the will)",
            "edges",
            1,
            True,
            m.HubState,
            "hub_state.json",
            "the hub's presence; `online` makes every edge resend what is unacknowledged",
        ),
        TopicSpec(
            TopicKind.LIVE_REGION_LOAD,
            "hub",
            "anyone",
            1,
            True,
            m.RegionalLoad,
            "live_region_load.json",
            "a region's load in its latest complete minute",
        ),
        TopicSpec(
            TopicKind.LIVE_TARIFF,
            "hub",
            "anyone",
            1,
            True,
            m.TariffUpdate,
            "live_tariff.json",
            "the price in force in a region, on every change",
        ),
        TopicSpec(
            TopicKind.LIVE_ALERT,
            "hub",
            "anyone",
            1,
            False,
            m.AlertNotice,
            "live_alert.json",
            "an alert raised, acknowledged or resolved",
        ),
    )
}

_ADAPTERS: Final[dict[TopicKind, TypeAdapter[Any]]] = {
    kind: TypeAdapter(spec.payload) for kind, spec in SPECS.items()
}
