"""The edge agent's MQTT link: one connection to the broker, kept up forever.

:class:`MqttLink` owns the aiomqtt client. Its :meth:`MqttLink.run` task
connects, and on **every** connect:

1. sets the MQTT will to the gateway's ``state`` topic: ``GatewayState(offline)``,
   retained, QoS 1 (the broker publishes it when the agent vanishes);
2. publishes ``GatewayBirth`` (retained) with the outbox stats of that moment;
3. publishes ``GatewayState(online, at, outbox)`` (retained);
4. subscribes (QoS 1) to the gateway's own ``ack`` and ``cmd`` topics and to the
   hub's ``state`` topic;
5. becomes *ready* (:attr:`MqttLink.ready`, :meth:`MqttLink.wait_ready`,
   ``on_ready``) and dispatches what arrives:

   * ``Ack`` → ``on_ack(ack)``;
   * ``ResendCommand`` → ``on_resend(command)``;
   * ``ReloadConfigCommand`` → logged at WARNING and ignored: the agent does not
     reload its configuration yet (restart it; see ``docs/edge.md``);
   * ``HubState`` → ``on_hub_state(state, retained)`` (``online`` makes the agent
     resend everything unacknowledged; ``retained`` tells a state that was already
     there when the link subscribed from one the hub just announced);
   * anything undecodable → logged at WARNING (empty payloads at DEBUG) and
     ignored, never fatal.

When the connection fails or drops, :meth:`MqttLink.run` waits and connects
again, forever: exponential backoff with full jitter (a delay drawn uniformly
from ``0 .. min(backoff_max_s, backoff_initial_s * 2**n)``), where ``n`` is
reset once a connection has lasted ``stable_after_s``. The first failure of an
outage is logged at WARNING, repeats at DEBUG, the recovery at INFO.

Everything else publishes through :meth:`MqttLink.publish` (QoS 1; returns
after the broker's PUBACK). aiomqtt's errors are translated at this boundary
into :class:`LinkError` (:class:`LinkDownError` when there is no connection).
A PUBACK only means the broker has the message: delivery is settled by the
hub's ``ack`` (see ``segs.edge.publisher``).

Cancelling :meth:`MqttLink.run` while connected publishes a last
``GatewayState(offline, at, outbox)`` (retained, at most ``farewell_timeout_s``)
and disconnects cleanly, so a stopped agent shows ``offline`` at once instead of
after the keepalive expires.

All topics come from :mod:`segs.protocol.topics`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode

from segs.edge.config import MqttSettings
from segs.edge.exceptions import EdgeError
from segs.edge.samples import from_epoch
from segs.protocol import (
    Ack,
    ConnectionState,
    DecodeError,
    GatewayBirth,
    GatewayState,
    HubState,
    OutboxStats,
    ReloadConfigCommand,
    ResendCommand,
    TopicKind,
    decode_message,
    encode,
    gateway_topic,
    hub_state_topic,
)

__all__ = [
    "LinkDownError",
    "LinkError",
    "LinkStats",
    "MqttLink",
    "backoff_delay",
]

_log = logging.getLogger(__name__)

QOS: Final = 1
"""Everything SEGS sends and subscribes to is QoS 1."""

_SUBSCRIBE_FAILURE: Final = 0x80
"""SUBACK return codes from this value on refuse the subscription."""
_PROTOCOLS: Final = {"5": aiomqtt.ProtocolVersion.V5, "3.1.1": aiomqtt.ProtocolVersion.V311}


class LinkError(EdgeError):
    """The MQTT link could not do what was asked (the message says why)."""


class LinkDownError(LinkError):
    """There is no usable connection to the broker right now."""


@dataclass(slots=True)
class LinkStats:
    """Counters of the link (monotonic, never reset)."""

    connects: int = 0
    """Successful connections (the first one included)."""
    connect_failures: int = 0
    disconnects: int = 0
    """Connections lost after they were established."""
    published: int = 0
    """Messages published (PUBACK received), birth and state included."""
    publish_failures: int = 0
    received: int = 0
    undecodable: int = 0
    errors: int = 0
    """Unexpected errors caught at the top of a connection (bugs; logged with a traceback)."""


def backoff_delay(attempt: int, *, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff, full jitter: uniform in ``0 .. min(max_s, initial_s * 2**attempt)``."""
    ceiling = min(max_s, initial_s * 2.0 ** min(attempt, 62))
    return rng.uniform(0.0, ceiling)


AckCallback = Callable[[Ack], object]
ResendCallback = Callable[[ResendCommand], object]
HubStateCallback = Callable[[HubState, bool], object]
ReadyCallback = Callable[[], object]


class MqttLink:
    """The gateway's MQTT connection; see the module docstring.

    The constructor only stores its arguments. ``birth`` builds the birth payload
    at each connect; ``outbox_stats`` (optional) gives the stats that go into the
    ``state`` payloads. Callbacks are plain functions called from the link's task;
    keep them quick. ``clock`` gives epoch seconds (UTC) for the ``at`` fields;
    ``rng`` draws the backoff jitter.
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        gateway_id: str,
        birth: Callable[[], GatewayBirth],
        outbox_stats: Callable[[], OutboxStats | None] | None = None,
        on_ack: AckCallback | None = None,
        on_resend: ResendCallback | None = None,
        on_hub_state: HubStateCallback | None = None,
        on_ready: ReadyCallback | None = None,
        on_down: ReadyCallback | None = None,
        clock: Callable[[], float] = time.time,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        stable_after_s: float = 30.0,
        timeout_s: float = 10.0,
        farewell_timeout_s: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        if not 0.0 < backoff_initial_s <= backoff_max_s:
            raise ValueError(
                f"need 0 < backoff_initial_s <= backoff_max_s, got "
                f"{backoff_initial_s!r}, {backoff_max_s!r}"
            )
        if timeout_s <= 0.0 or farewell_timeout_s < 0.0 or stable_after_s < 0.0:
            raise ValueError("timeouts must be positive and stable_after_s not negative")
        self.settings = settings
        self.gateway_id = gateway_id
        self.stats = LinkStats()
        self._birth = birth
        self._outbox_stats = outbox_stats
        self._on_ack = on_ack
        self._on_resend = on_resend
        self._on_hub_state = on_hub_state
        self._on_ready = on_ready
        self._on_down = on_down
        self._clock = clock
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._stable_after_s = stable_after_s
        self._timeout_s = timeout_s
        self._farewell_timeout_s = farewell_timeout_s
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        # Topics, built once (and validated: an invalid gateway id fails here).
        self._state_topic = gateway_topic(gateway_id, TopicKind.GATEWAY_STATE)
        self._birth_topic = gateway_topic(gateway_id, TopicKind.GATEWAY_BIRTH)
        self._ack_topic = gateway_topic(gateway_id, TopicKind.ACK)
        self._cmd_topic = gateway_topic(gateway_id, TopicKind.COMMAND)
        self._hub_topic = hub_state_topic()
        self._topics = {
            kind: gateway_topic(gateway_id, kind) for kind in (TopicKind.WINDOWS, TopicKind.EVENTS)
        }
        self._client: aiomqtt.Client | None = None
        self._ready = asyncio.Event()
        self._generation = 0
        self._down_since: float | None = None

    # --- state --------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """``host:port`` of the broker, for messages."""
        return f"{self.settings.host}:{self.settings.port}"

    @property
    def ready(self) -> bool:
        """Connected, announced and subscribed: batches may be published."""
        return self._ready.is_set()

    @property
    def generation(self) -> int:
        """How many times the link became ready; changes with every new connection."""
        return self._generation

    async def wait_ready(self) -> None:
        """Return once the link is ready (at once if it is)."""
        await self._ready.wait()

    # --- publishing ---------------------------------------------------------------------------

    def topic(self, kind: TopicKind) -> str:
        """This gateway's topic of ``kind``."""
        return self._topics.get(kind) or gateway_topic(self.gateway_id, kind)

    async def publish(self, kind: TopicKind, payload: bytes, *, retain: bool = False) -> None:
        """Publish ``payload`` on this gateway's ``kind`` topic (QoS 1); return after the PUBACK.

        Raises :class:`LinkDownError` when not ready and :class:`LinkError` when the
        publish fails or its PUBACK does not come within ``timeout_s``.
        """
        client = self._client
        if client is None or not self._ready.is_set():
            raise LinkDownError(f"not connected to the MQTT broker at {self.endpoint}")
        await self._publish(client, self.topic(kind), payload, retain=retain)

    async def publish_state(self) -> None:
        """Publish ``GatewayState(online, at, outbox)`` again (retained), e.g. with fresh stats."""
        await self.publish(TopicKind.GATEWAY_STATE, encode(self._state(online=True)), retain=True)

    async def _publish(
        self, client: aiomqtt.Client, topic: str, payload: bytes, *, retain: bool
    ) -> None:
        try:
            await client.publish(topic, payload, qos=QOS, retain=retain, timeout=self._timeout_s)
        except aiomqtt.MqttError as exc:
            self.stats.publish_failures += 1
            raise LinkError(f"publishing on {topic} failed: {exc}") from exc
        self.stats.published += 1

    # --- the connection loop ------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, announce, subscribe, dispatch; reconnect forever. Ends only when cancelled."""
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            started = loop.time()
            connected = await self._session()
            if connected and loop.time() - started >= self._stable_after_s:
                attempt = 0
            delay = backoff_delay(
                attempt, initial_s=self._backoff_initial_s, max_s=self._backoff_max_s, rng=self._rng
            )
            attempt += 1
            if connected:
                _log.debug("MQTT: reconnecting in %.1f s", delay)
            await asyncio.sleep(delay)

    async def _session(self) -> bool:
        """One connection, from connect to loss; return whether it was established."""
        try:
            client = self._make_client()
        except (OSError, ValueError) as exc:  # TLS files unreadable or invalid
            self._connect_failed(f"cannot set up TLS: {exc}")
            return False
        established = False
        try:
            async with client:
                established = True
                try:
                    await self._announce(client)
                    await self._serve(client)
                except asyncio.CancelledError:
                    await self._farewell(client)
                    raise
        except (aiomqtt.MqttError, LinkError, OSError) as exc:
            if established:
                self._lost(str(exc) or type(exc).__name__)
            else:
                self._connect_failed(str(exc) or type(exc).__name__)
        except Exception:  # noqa: BLE001 - the connection's top level: log, count, reconnect
            self.stats.errors += 1
            _log.exception("MQTT: unexpected error; reconnecting")
        finally:
            self._set_down()
        return established

    def _make_client(self) -> aiomqtt.Client:
        mqtt = self.settings
        password = mqtt.password.get_secret_value() if mqtt.password is not None else None
        will = aiomqtt.Will(
            self._state_topic,
            encode(GatewayState(gateway_id=self.gateway_id, state=ConnectionState.OFFLINE)),
            qos=QOS,
            retain=True,
        )
        return aiomqtt.Client(
            mqtt.host,
            mqtt.port,
            identifier=mqtt.client_id or self.gateway_id,
            username=mqtt.username,
            password=password,
            protocol=_PROTOCOLS[mqtt.protocol],
            will=will,
            keepalive=mqtt.keepalive_s,
            tls_context=self._tls_context() if mqtt.tls else None,
            timeout=self._timeout_s,
        )

    def _tls_context(self) -> ssl.SSLContext:
        # Built at every connect, so renewed certificate files are picked up.
        mqtt = self.settings
        context = ssl.create_default_context(
            cafile=str(mqtt.ca_file) if mqtt.ca_file is not None else None
        )
        if mqtt.cert_file is not None and mqtt.key_file is not None:
            context.load_cert_chain(str(mqtt.cert_file), str(mqtt.key_file))
        return context

    async def _announce(self, client: aiomqtt.Client) -> None:
        await self._publish(client, self._birth_topic, encode(self._birth()), retain=True)
        await self._publish(
            client, self._state_topic, encode(self._state(online=True)), retain=True
        )
        topics = (self._ack_topic, self._cmd_topic, self._hub_topic)
        granted = await client.subscribe(
            [(topic, QOS) for topic in topics], timeout=self._timeout_s
        )
        codes: list[int] = [c.value if isinstance(c, ReasonCode) else c for c in granted]
        for topic, value in zip(topics, codes, strict=False):
            if value >= _SUBSCRIBE_FAILURE:
                # Usually the broker's ACL. Without acks nothing is ever deleted.
                _log.error("MQTT: the broker refused the subscription to %s (0x%02x)", topic, value)
        self._client = client
        self._generation += 1
        self.stats.connects += 1
        down_since, self._down_since = self._down_since, None
        version = f"MQTT {self.settings.protocol}"
        if down_since is None:
            _log.info(
                "MQTT: connected to %s (%s) as %s",
                self.endpoint,
                version,
                self.settings.client_id or self.gateway_id,
            )
        else:
            _log.info(
                "MQTT: connected to %s (%s) again after %.0f s",
                self.endpoint,
                version,
                max(0.0, time.monotonic() - down_since),
            )
        self._ready.set()
        self._call(self._on_ready)

    async def _serve(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self._dispatch(message.topic.value, message.payload, retained=message.retain)
        # aiomqtt ends the iteration only with an error; a clean end is a lost connection too.
        raise LinkError("the message stream ended")

    async def _farewell(self, client: aiomqtt.Client) -> None:
        """Publish ``offline`` (retained) before a clean disconnect, within the farewell timeout."""
        self._ready.clear()
        client.timeout = max(self._farewell_timeout_s, 0.1)  # bounds the DISCONNECT wait
        payload = encode(self._state(online=False))
        try:
            async with asyncio.timeout(self._farewell_timeout_s):
                await client.publish(self._state_topic, payload, qos=QOS, retain=True)
        except (TimeoutError, aiomqtt.MqttError) as exc:
            _log.debug("MQTT: could not publish the offline state: %s", exc)
        else:
            self.stats.published += 1
            _log.info("MQTT: published state offline; disconnecting")

    def _state(self, *, online: bool) -> GatewayState:
        stats = self._outbox_stats() if self._outbox_stats is not None else None
        return GatewayState(
            gateway_id=self.gateway_id,
            state=ConnectionState.ONLINE if online else ConnectionState.OFFLINE,
            at=self._now(),
            outbox=stats,
        )

    def _now(self) -> datetime:
        return from_epoch(self._clock())

    def _set_down(self) -> None:
        was_ready = self._ready.is_set()
        self._ready.clear()
        self._client = None
        if was_ready:
            self._call(self._on_down)

    def _connect_failed(self, error: str) -> None:
        self.stats.connect_failures += 1
        if self._down_since is None:
            self._down_since = time.monotonic()
            _log.warning("MQTT: cannot connect to %s: %s; retrying", self.endpoint, error)
        else:
            _log.debug("MQTT: cannot connect to %s (still): %s", self.endpoint, error)

    def _lost(self, error: str) -> None:
        self.stats.disconnects += 1
        self._down_since = time.monotonic()
        _log.warning("MQTT: lost the connection to %s: %s; reconnecting", self.endpoint, error)

    # --- incoming -----------------------------------------------------------------------------

    def _dispatch(self, topic: str, payload: object, *, retained: bool = False) -> None:
        """Decode one incoming message and hand it to its callback; never raises for bad input."""
        self.stats.received += 1
        if not isinstance(payload, bytes | bytearray) or not payload:
            self.stats.undecodable += 1
            _log.debug("MQTT: ignoring an empty message on %s", topic)
            return
        try:
            decoded = decode_message(topic, payload)
        except DecodeError as exc:
            self.stats.undecodable += 1
            _log.warning("MQTT: ignoring an undecodable message on %s: %s", topic, exc)
            return
        message = decoded.payload
        if isinstance(message, Ack):
            self._call(self._on_ack, message)
        elif isinstance(message, ResendCommand):
            _log.info(
                "MQTT: command %s: resend seq %d..%d",
                message.command_id,
                message.from_seq,
                message.to_seq,
            )
            self._call(self._on_resend, message)
        elif isinstance(message, ReloadConfigCommand):
            _log.warning(
                "MQTT: command %s: reload_config is not supported yet; ignored "
                "(restart the agent to apply a new configuration)",
                message.command_id,
            )
        elif isinstance(message, HubState):
            _log.info("MQTT: hub %s is %s", message.hub_id, message.state.value)
            self._call(self._on_hub_state, message, retained)
        else:
            _log.debug("MQTT: ignoring a %s on %s", type(message).__name__, topic)

    def _call(self, callback: Callable[..., object] | None, *args: object) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except EdgeError:
            self.stats.errors += 1
            _log.exception("MQTT: callback %r failed", callback)
