"""Fuzzed payloads over real MQTT: each lands in the dead letters, valid traffic keeps flowing.

Hypothesis drives a synchronous test, so the hub runs in a thread of its own
(:class:`ThreadedHub`) and the fuzzer publishes with a plain paho client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hubkit import T0, Clock, make_window, scalar, window_batch
from services import MosquittoBroker

from segs.hub.ingest import Ingest
from segs.hub.settings import HubSettings
from segs.hub.store import Store, StoreOptions, open_store
from segs.protocol import (
    Ack,
    DecodeError,
    TopicKind,
    decode,
    decode_message,
    encode,
    gateway_topic,
)

GATEWAY = "gw-fuzz"
TOPICS = [
    gateway_topic(GATEWAY, kind)
    for kind in (
        TopicKind.WINDOWS,
        TopicKind.EVENTS,
        TopicKind.GATEWAY_BIRTH,
        TopicKind.GATEWAY_STATE,
    )
]


class ThreadedHub:
    """Ingest running in its own thread and event loop."""

    def __init__(self, settings: HubSettings, store: Store, clock: Clock) -> None:
        self.settings, self.store, self.clock = settings, store, clock
        self.ingest: Ingest | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.ingest = Ingest(self.settings, self.store, clock=self.clock)
        task = asyncio.create_task(self.ingest.run())
        await self.ingest.ready.wait()
        self._ready.set()
        await self._stop.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def __enter__(self) -> ThreadedHub:
        self._thread.start()
        assert self._ready.wait(10), "the hub did not come up"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


class AckListener:
    """A paho client that publishes as the fuzzed gateway and collects its acks."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.settled: set[int] = set()
        self._changed = threading.Condition()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="fuzzer", protocol=mqtt.MQTTv5
        )
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(gateway_topic(GATEWAY, TopicKind.ACK), qos=1)
        assert subscribed.wait(5), "no SUBACK"

    def _on_message(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        ack = decode(message.payload, Ack)
        with self._changed:
            self.settled |= set(ack.seqs) | set(ack.rejected)
            self._changed.notify_all()

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def wait_settled(self, seq: int, timeout: float = 10.0) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: seq in self.settled, timeout)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=15,
)
_VALID = json.loads(encode(window_batch(GATEWAY, 1, [make_window("MTR-F", T0)])))


@st.composite
def _mutated_batches(draw: st.DrawFn) -> bytes:
    """A valid window batch with one field deleted, replaced by anything, or added."""
    document = json.loads(json.dumps(_VALID))
    target = document if draw(st.booleans()) else document["windows"][0]
    key = draw(st.sampled_from(sorted(target)) | st.text(max_size=8))
    if draw(st.booleans()):
        target.pop(key, None)
    else:
        target[key] = draw(_json_values)
    return json.dumps(document).encode()


_payloads = st.one_of(
    st.binary(max_size=200),
    _json_values.map(lambda value: json.dumps(value).encode()),
    _mutated_batches(),
)


def _undecodable(topic: str, payload: bytes) -> bool:
    try:
        decode_message(topic, payload)
    except (DecodeError, RecursionError):
        return True
    return False


@pytest.fixture
def fuzz_target(
    database_url: str, mosquitto: MosquittoBroker, clock: Clock
) -> Iterator[tuple[ThreadedHub, AckListener]]:
    """A threaded hub on ``database_url`` and a paho publisher for gw-fuzz."""
    settings = HubSettings(
        database_url=database_url, mqtt_url=mosquitto.url, ingest_batch_max_delay_s=0.0
    )
    store = open_store(database_url, options=StoreOptions.from_settings(settings), clock=clock)
    listener = AckListener(mosquitto)
    try:
        with ThreadedHub(settings, store, clock) as hub:
            yield hub, listener
    finally:
        listener.close()
        store.close()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(topic=st.sampled_from(TOPICS), payload=_payloads)
def test_fuzzed_payloads_are_dead_lettered_and_valid_batches_still_flow(
    fuzz_target: tuple[ThreadedHub, AckListener], topic: str, payload: bytes
) -> None:
    hub, listener = fuzz_target
    assert hub.ingest is not None
    letters_before = hub.ingest.stats.dead_letters
    seq = 10_000 + hub.ingest.stats.messages
    listener.publish(topic, payload)
    # The same window each time: deduplicated, yet every batch is acknowledged.
    valid = window_batch(GATEWAY, seq, [make_window("MTR-F", T0)])
    listener.publish(TOPICS[0], encode(valid))
    assert listener.wait_settled(seq), "a valid batch after a fuzzed one was not acknowledged"
    if _undecodable(topic, payload):
        assert hub.ingest.stats.dead_letters == letters_before + 1
    assert hub.ingest.stats.errors == 0
    assert (
        scalar(hub.store.engine, "SELECT count(*) FROM dead_letters")
        == hub.ingest.stats.dead_letters
    )
