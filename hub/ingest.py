"""Ingest: MQTT in, committed rows, acks out.

:class:`Ingest` connects to the broker (MQTT 5) with a retained ``HubState``
offline will, subscribes, publishes ``HubState`` online (retained), and then:

- **receives** window and event batches through the shared-subscription group
  (``$share/{group}/...``; a plain subscription when no group is set), so
  several workers split them, and births, states and the hub state through
  plain subscriptions (every worker sees every gateway's presence, retained
  births included — MQTT does not deliver retained messages to shared
  subscriptions);
- **decodes** each message with :func:`segs.protocol.decode_message` on the
  event loop. Nothing received can crash it: an undecodable payload becomes a
  dead letter with the protocol's reason code, the topic and the raw bytes;
- **batches** decoded messages by size (``ingest_batch_max_windows``) and time
  (``ingest_batch_max_delay_s``); while one commit runs the next batch
  accumulates (group commit);
- **commits** in ONE database thread (one writer, one transaction per batch;
  see :meth:`segs.hub.store.Store.commit`);
- **acknowledges** only then: one ``Ack`` per gateway (QoS 1) naming the seqs
  committed and the seqs dead-lettered (``rejected``). A batch that failed to
  decode but whose topic names a gateway and whose payload still shows a seq is
  acknowledged as rejected too, once its dead letter is committed: the edge
  would otherwise resend it forever.

A database that cannot take a commit (:class:`~segs.hub.exceptions.StoreUnavailableError`)
is retried with backoff and nothing is acknowledged meanwhile; the edges keep
their batches. A lost broker connection is re-established forever with
backoff; what was received but not committed is dropped and resent by the edges
when the hub's state turns online again. When another worker's will turns the
hub state offline, a live worker publishes online again, so edges resend what
the dead worker held.

Memory stays bounded: above ``ingest_max_pending_windows`` decoded but
uncommitted windows, new batches are dropped unacknowledged (the edges resend).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

import aiomqtt

from segs.hub.db.types import utc_now
from segs.hub.exceptions import StoreError, StoreUnavailableError
from segs.hub.settings import HubSettings
from segs.hub.store import (
    Clock,
    CommitResult,
    DeadLetterRecord,
    Incoming,
    Store,
)
from segs.protocol import (
    Ack,
    ConnectionState,
    DecodeError,
    EventBatch,
    GatewayBirth,
    GatewayState,
    HubState,
    Reason,
    TopicError,
    TopicKind,
    WindowBatch,
    decode,
    decode_message,
    encode,
    gateway_topic,
    hub_state_topic,
    limits,
    parse_topic,
    subscription,
)

__all__ = ["Ingest", "IngestStats"]

_log = logging.getLogger(__name__)

_QOS: Final = 1
_BACKOFF_INITIAL_S: Final = 0.5
_BACKOFF_MAX_S: Final = 30.0
_REONLINE_DELAY_S: Final = 0.5
_SEQ_FIELD: Final = "seq"  # read from payloads that failed to decode, to reject them by seq
_BATCH_KINDS: Final = frozenset({TopicKind.WINDOWS, TopicKind.EVENTS})


@dataclass
class IngestStats:
    """Counters since the component started (read them; never reset)."""

    connects: int = 0
    disconnects: int = 0
    messages: int = 0
    windows_received: int = 0
    """Windows in committed batches (duplicates included)."""
    windows_stored: int = 0
    """Of those, new windows."""
    batches_committed: int = 0
    batches_rejected: int = 0
    dead_letters: int = 0
    decode_errors: int = 0
    commits: int = 0
    commit_retries: int = 0
    acks_published: int = 0
    shed_batches: int = 0
    """Batches dropped unacknowledged because too much was pending."""
    errors: int = 0
    """Unexpected errors caught at a task's top level (logged with their traceback)."""
    last_commit_s: float = 0.0


@dataclass
class _Pending:
    items: list[Incoming] = field(default_factory=list)
    letters: list[DeadLetterRecord] = field(default_factory=list)
    windows: int = 0
    since: float = 0.0

    def __bool__(self) -> bool:
        return bool(self.items or self.letters)


class Ingest:
    """The ingest component; see the module docstring. Run it with :meth:`run`."""

    def __init__(
        self,
        settings: HubSettings,
        store: Store,
        *,
        clock: Clock = utc_now,
        client_id: str | None = None,
    ) -> None:
        """Prepare the component; nothing connects until :meth:`run`."""
        self._settings = settings
        self._store = store
        self._clock = clock
        self._client_id = client_id or f"{settings.hub_id}-ingest-{secrets.token_hex(4)}"
        self.stats = IngestStats()
        self.ready = asyncio.Event()
        """Set while subscribed and announced online; cleared when the connection drops."""
        self._pending = _Pending()
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._reonline: asyncio.Task[None] | None = None
        self._rng = random.Random()  # noqa: S311 - backoff jitter, not cryptography

    @property
    def client_id(self) -> str:
        """The MQTT client id of this worker."""
        return self._client_id

    # -- connection -------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled: connect, ingest, reconnect with backoff when the link drops."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segs-ingest-db")
        backoff = _BACKOFF_INITIAL_S
        try:
            while True:
                started = time.monotonic()
                try:
                    async with self._client() as client:
                        self.stats.connects += 1
                        await self._session(client, executor)
                except* aiomqtt.MqttError as group:
                    self._connection_lost(group)
                finally:
                    self.ready.clear()
                if time.monotonic() - started > _BACKOFF_MAX_S:
                    backoff = _BACKOFF_INITIAL_S
                await asyncio.sleep(backoff * (0.5 + self._rng.random()))
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
        finally:
            await asyncio.shield(asyncio.to_thread(executor.shutdown, wait=True))

    def _connection_lost(self, group: BaseExceptionGroup[aiomqtt.MqttError]) -> None:
        self.stats.disconnects += 1
        level = logging.WARNING if self.stats.disconnects == 1 else logging.INFO
        _log.log(level, "MQTT connection to %s lost or refused: %s", self._settings.mqtt_url, group)

    def _client(self) -> aiomqtt.Client:
        settings = self._settings
        will = aiomqtt.Will(
            hub_state_topic(),
            encode(HubState(hub_id=settings.hub_id, state=ConnectionState.OFFLINE)),
            qos=_QOS,
            retain=True,
        )
        password = settings.mqtt_password.get_secret_value() if settings.mqtt_password else None
        return aiomqtt.Client(
            settings.mqtt_host,
            settings.mqtt_port,
            username=settings.mqtt_username,
            password=password,
            identifier=self._client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=will,
            keepalive=settings.mqtt_keepalive_s,
            timeout=10.0,
            max_inflight_messages=100,
            tls_context=self._tls_context(),
        )

    def _tls_context(self) -> ssl.SSLContext | None:
        settings = self._settings
        if not settings.mqtt_tls:
            return None
        context = ssl.create_default_context(
            cafile=str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None
        )
        if settings.mqtt_cert_file and settings.mqtt_key_file:
            context.load_cert_chain(settings.mqtt_cert_file, settings.mqtt_key_file)
        return context

    async def _session(self, client: aiomqtt.Client, executor: ThreadPoolExecutor) -> None:
        group = self._settings.share_group_or_none
        await client.subscribe(
            [
                (subscription(TopicKind.WINDOWS, share_group=group), _QOS),
                (subscription(TopicKind.EVENTS, share_group=group), _QOS),
                (subscription(TopicKind.GATEWAY_BIRTH), _QOS),
                (subscription(TopicKind.GATEWAY_STATE), _QOS),
                (hub_state_topic(), _QOS),
            ]
        )
        # Whatever was pending belongs to the previous connection; the edges resend it
        # when they see this online state.
        self._pending = _Pending()
        self._wake.clear()
        self._full.clear()
        await self._publish_online(client)
        self.ready.set()
        _log.info(
            "ingest %s subscribed on %s (%s)",
            self._client_id,
            self._settings.mqtt_url,
            f"shared group {group}" if group else "plain subscription",
        )
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._receive(client))
                tasks.create_task(self._commit_loop(client, executor, tasks))
        except asyncio.CancelledError:
            # A clean disconnect does not fire the will: say offline ourselves, so the
            # other workers announce online and the edges resend what this one held.
            await self._say_offline(client)
            raise
        finally:
            if self._reonline is not None:
                self._reonline.cancel()
                self._reonline = None

    async def _publish_online(self, client: aiomqtt.Client) -> None:
        state = HubState(
            hub_id=self._settings.hub_id, state=ConnectionState.ONLINE, at=self._clock()
        )
        await client.publish(hub_state_topic(), encode(state), qos=_QOS, retain=True)

    async def _say_offline(self, client: aiomqtt.Client) -> None:
        state = HubState(hub_id=self._settings.hub_id, state=ConnectionState.OFFLINE)
        try:
            async with asyncio.timeout(2.0):
                await client.publish(hub_state_topic(), encode(state), qos=_QOS, retain=True)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            _log.info("could not announce offline: %s", exc)

    # -- receiving --------------------------------------------------------------------------

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            try:
                self._on_message(client, message)
            # Top level of one message: whatever goes wrong with it is logged and
            # counted, and the next message is handled (never crash on input).
            except Exception:  # noqa: BLE001 - the message's top level: log, count, go on
                self.stats.errors += 1
                _log.exception("unexpected error handling a message on %s", message.topic)

    def _on_message(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        payload = _as_bytes(message.payload)
        self.stats.messages += 1
        if topic == hub_state_topic():
            self._on_hub_state(client, payload, retained=message.retain)
            return
        pending = self._pending
        if pending.windows >= self._settings.ingest_max_pending_windows and _is_batch(topic):
            self.stats.shed_batches += 1
            if self.stats.shed_batches == 1 or self.stats.shed_batches % 1000 == 0:
                _log.warning(
                    "%d windows pending: dropping batches unacknowledged (%d so far); "
                    "the database is not keeping up",
                    pending.windows,
                    self.stats.shed_batches,
                )
            return
        received_at = self._clock()
        try:
            decoded = decode_message(topic, payload)
        except DecodeError as exc:
            self.stats.decode_errors += 1
            self._add_letter(_letter(topic, payload, exc, received_at))
            return
        except RecursionError:
            # segs.protocol explains invalid JSON with json.loads, which gives up on
            # deeply nested documents with RecursionError instead of a DecodeError.
            self.stats.decode_errors += 1
            error = DecodeError(Reason.MALFORMED_JSON, "payload is not JSON: nested too deeply")
            self._add_letter(_letter(topic, payload, error, received_at))
            return
        body = decoded.payload
        if not isinstance(body, WindowBatch | EventBatch | GatewayBirth | GatewayState):
            error = DecodeError(Reason.UNKNOWN_TOPIC, f"{type(body).__name__} is not for the hub")
            self._add_letter(_letter(topic, payload, error, received_at))
            return
        item = Incoming(topic, payload, body, received_at, retained=message.retain)
        windows = len(body.windows) if isinstance(body, WindowBatch) else 0
        self._add(item, windows)

    def _add(self, item: Incoming, windows: int) -> None:
        pending = self._pending
        if not pending:
            pending.since = time.monotonic()
        pending.items.append(item)
        pending.windows += windows
        self._wake.set()
        if pending.windows >= self._settings.ingest_batch_max_windows:
            self._full.set()

    def _add_letter(self, letter: DeadLetterRecord) -> None:
        pending = self._pending
        if not pending:
            pending.since = time.monotonic()
        pending.letters.append(letter)
        self._wake.set()

    def _on_hub_state(self, client: aiomqtt.Client, payload: bytes, *, retained: bool) -> None:
        try:
            state = decode(payload, HubState)
        except DecodeError as exc:
            _log.warning("ignoring an invalid hub state: %s", exc)
            return
        # A live "offline" is another worker's will: say online again, so the edges
        # resend what that worker had not acknowledged. A retained one is history.
        if state.state is ConnectionState.OFFLINE and not retained and self._reonline is None:
            _log.info("hub state turned offline (%s's will); announcing online", state.hub_id)
            self._reonline = asyncio.get_running_loop().create_task(self._announce_again(client))

    async def _announce_again(self, client: aiomqtt.Client) -> None:
        try:
            await asyncio.sleep(_REONLINE_DELAY_S)
            await self._publish_online(client)
        except aiomqtt.MqttError as exc:
            _log.info("could not announce online again: %s", exc)
        finally:
            self._reonline = None

    # -- committing -------------------------------------------------------------------------

    async def _commit_loop(
        self, client: aiomqtt.Client, executor: ThreadPoolExecutor, tasks: asyncio.TaskGroup
    ) -> None:
        settings = self._settings
        while True:
            await self._wake.wait()
            delay = settings.ingest_batch_max_delay_s
            remaining = self._pending.since + delay - time.monotonic()
            if remaining > 0 and not self._full.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._full.wait()
            items, letters = self._take(settings.ingest_batch_max_windows)
            if not items and not letters:
                continue
            commit = asyncio.ensure_future(self._commit(items, letters, executor))
            try:
                result = await asyncio.shield(commit)
            except asyncio.CancelledError:
                # Shutting down mid-commit: finish it and acknowledge it if we can.
                with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                    async with asyncio.timeout(5.0):
                        result = await commit
                        if result is not None:
                            await self._publish_acks(client, result)
                raise
            if result is not None:
                # The next commit need not wait for these PUBACKs; a failure to publish
                # ends the session (the TaskGroup), and the edges resend.
                tasks.create_task(self._publish_acks(client, result))

    def _take(self, max_windows: int) -> tuple[list[Incoming], list[DeadLetterRecord]]:
        """Take whole messages from the front, up to ``max_windows`` windows (at least one)."""
        pending = self._pending
        taken = 0
        count = 0
        for item in pending.items:
            size = len(item.message.windows) if isinstance(item.message, WindowBatch) else 0
            if count and taken + size > max_windows:
                break
            taken += size
            count += 1
        items, pending.items = pending.items[:count], pending.items[count:]
        letters, pending.letters = pending.letters, []
        pending.windows -= taken
        if pending:
            # What is left waited through this commit already: the next one starts at once.
            pending.since = float("-inf")
            if pending.windows < max_windows:
                self._full.clear()
        else:
            self._wake.clear()
            self._full.clear()
        return items, letters

    async def _commit(
        self,
        items: list[Incoming],
        letters: list[DeadLetterRecord],
        executor: ThreadPoolExecutor,
    ) -> CommitResult | None:
        """Commit in the database thread; retry while the database is unavailable."""
        loop = asyncio.get_running_loop()
        backoff = _BACKOFF_INITIAL_S
        while True:
            started = time.perf_counter()
            try:
                result = await loop.run_in_executor(executor, self._store.commit, items, letters)
            except StoreUnavailableError as exc:
                self.stats.commit_retries += 1
                level = logging.WARNING if self.stats.commit_retries == 1 else logging.INFO
                _log.log(level, "%s; retrying in %.1f s", exc, backoff)
                await asyncio.sleep(backoff * (0.5 + self._rng.random()))
                backoff = min(backoff * 2, self._settings.commit_retry_max_s)
                continue
            except StoreError as exc:
                self.stats.errors += 1
                _log.error("dropping %d dead letters the database refuses: %s", len(letters), exc)
                return None
            # Top level of one commit: a bug must not stop ingest. Nothing is
            # acknowledged, so the edges resend the batches.
            except Exception:  # noqa: BLE001 - the commit's top level: log, count, go on
                self.stats.errors += 1
                _log.exception("unexpected error committing %d messages", len(items))
                return None
            self._count(result, time.perf_counter() - started)
            return result

    def _count(self, result: CommitResult, seconds: float) -> None:
        stats = self.stats
        stats.commits += 1
        stats.windows_received += result.windows_received
        stats.windows_stored += result.windows_stored
        stats.batches_committed += result.batches_committed
        stats.batches_rejected += result.batches_rejected
        stats.dead_letters += result.dead_letters
        stats.last_commit_s = seconds
        _log.debug(
            "committed %d batches (%d windows, %d new) in %.1f ms",
            result.batches_committed,
            result.windows_received,
            result.windows_stored,
            seconds * 1000,
        )

    async def _publish_acks(self, client: aiomqtt.Client, result: CommitResult) -> None:
        acked_at: datetime = self._clock()
        publishes = []
        for gateway_id, entry in result.acks.items():
            for seqs, rejected in _chunks(sorted(entry.seqs), sorted(entry.rejected)):
                ack = Ack(gateway_id=gateway_id, seqs=seqs, rejected=rejected, acked_at=acked_at)
                publishes.append(
                    client.publish(gateway_topic(gateway_id, TopicKind.ACK), encode(ack), qos=_QOS)
                )
        if publishes:
            await asyncio.gather(*publishes)
            self.stats.acks_published += len(publishes)


# -- helpers ----------------------------------------------------------------------------------


def _as_bytes(payload: object) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode()
    if payload is None:
        return b""
    return str(payload).encode()


def _is_batch(topic: str) -> bool:
    try:
        return parse_topic(topic).kind in _BATCH_KINDS
    except TopicError:
        return False


def _letter(
    topic: str, payload: bytes, error: DecodeError, received_at: datetime
) -> DeadLetterRecord:
    """A dead letter for an undecodable message; with a seq when the edge must get a rejection."""
    gateway_id: str | None = None
    seq: int | None = None
    try:
        parsed = parse_topic(topic)
    except TopicError:
        parsed = None
    if parsed is not None:
        gateway_id = parsed.gateway_id
        if gateway_id is not None and parsed.kind in _BATCH_KINDS:
            seq = _recover_seq(payload)
    stored = payload[: limits.MAX_PAYLOAD_BYTES]
    message = error.message if len(stored) == len(payload) else f"{error.message} (truncated)"
    return DeadLetterRecord(
        topic=topic[:1000],
        payload=stored,
        reason=error.reason.value,
        message=message[: limits.MAX_TEXT_LENGTH],
        received_at=received_at,
        gateway_id=gateway_id,
        seq=seq,
    )


def _recover_seq(payload: bytes) -> int | None:
    """The seq of a batch that failed to decode, when its JSON still shows one."""
    if len(payload) > limits.MAX_PAYLOAD_BYTES:
        return None
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    seq = document.get(_SEQ_FIELD)
    if isinstance(seq, int) and not isinstance(seq, bool) and 1 <= seq <= limits.MAX_SEQ:
        return seq
    return None


def _chunks(seqs: list[int], rejected: list[int]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Split the seqs into acks of at most ``MAX_SEQS_PER_ACK`` of each kind."""
    size = limits.MAX_SEQS_PER_ACK
    count = max(len(seqs), len(rejected), 1)
    return [
        (tuple(seqs[i : i + size]), tuple(rejected[i : i + size]))
        for i in range(0, count, size)
        if seqs[i : i + size] or rejected[i : i + size]
    ]
