"""The test harness itself: a real Mosquitto per test and a fresh PostgreSQL database."""

from __future__ import annotations

import asyncio
import socket
import uuid
from pathlib import Path

import aiomqtt
import psycopg
import pytest
import sqlalchemy
from services import (
    MosquittoBroker,
    MosquittoFactory,
    PostgresDatabase,
    ServiceUnavailableError,
    create_database,
    find_mosquitto,
)

TIMEOUT = 10.0


def _client(broker: MosquittoBroker) -> aiomqtt.Client:
    return aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=f"segs-test-{uuid.uuid4().hex[:8]}",
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=TIMEOUT,
    )


async def _round_trip(broker: MosquittoBroker, payload: bytes) -> bytes:
    """Publish ``payload`` at QoS 1 and return what the same client receives."""
    topic = f"segs-test/{uuid.uuid4().hex}"
    async with asyncio.timeout(TIMEOUT), _client(broker) as client:
        await client.subscribe(topic, qos=1)
        await client.publish(topic, payload, qos=1)
        message = await anext(client.messages)
        assert str(message.topic) == topic
        assert isinstance(message.payload, bytes)
        return message.payload


async def _retained(broker: MosquittoBroker, topic: str) -> bytes | None:
    """Return the retained message on ``topic``, or ``None`` when there is none.

    The broker sends retained messages right after SUBACK, so a marker the client
    publishes after subscribing arrives after any retained message: no sleep needed.
    """
    async with asyncio.timeout(TIMEOUT), _client(broker) as client:
        await client.subscribe(topic, qos=1)
        await client.publish(topic, b"marker", qos=1)
        first = await anext(client.messages)
        if first.retain and first.payload != b"marker":
            assert isinstance(first.payload, bytes)
            return first.payload
        assert first.payload == b"marker"
        return None


async def test_round_trip_survives_stop_and_restart(mosquitto: MosquittoBroker) -> None:
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    assert await _round_trip(mosquitto, b"first") == b"first"
    port = mosquitto.port

    await asyncio.to_thread(mosquitto.stop)
    assert not mosquitto.running
    with pytest.raises(aiomqtt.MqttError):
        async with asyncio.timeout(TIMEOUT), _client(mosquitto):
            pass

    await asyncio.to_thread(mosquitto.restart)
    assert mosquitto.port == port
    assert await _round_trip(mosquitto, b"second") == b"second"
    assert "mosquitto version" in mosquitto.log_text()


async def test_kill_then_start_on_the_same_port(mosquitto: MosquittoBroker) -> None:
    await asyncio.to_thread(mosquitto.kill)
    assert not mosquitto.running
    await asyncio.to_thread(mosquitto.start)
    assert await _round_trip(mosquitto, b"after kill") == b"after kill"


@pytest.mark.parametrize(("persistence", "survives"), [(True, True), (False, False)])
async def test_retained_message_survives_restart_only_with_persistence(
    mosquitto_factory: MosquittoFactory, persistence: bool, survives: bool
) -> None:
    broker = mosquitto_factory(persistence=persistence)
    topic = f"segs-test/retained/{uuid.uuid4().hex}"
    async with asyncio.timeout(TIMEOUT), _client(broker) as client:
        await client.publish(topic, b"kept", qos=1, retain=True)
    assert await _retained(broker, topic) == b"kept"

    await asyncio.to_thread(broker.restart)

    assert await _retained(broker, topic) == (b"kept" if survives else None)


async def test_session_broker_round_trip(mosquitto_session: MosquittoBroker) -> None:
    assert await _round_trip(mosquitto_session, b"shared") == b"shared"


def _listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_start_fails_with_the_log_when_the_port_is_taken(tmp_path: Path) -> None:
    with _listener() as taken:
        broker = MosquittoBroker(tmp_path, port=taken.getsockname()[1])
        with pytest.raises(ServiceUnavailableError, match=r"Address already in use"):
            broker.start()
        assert not broker.running


async def test_a_picked_port_taken_before_start_is_replaced(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as thief:
        thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        thief.bind(("127.0.0.1", broker.port))
        thief.listen()
        with broker:
            assert broker.port != thief.getsockname()[1]
            assert await _round_trip(broker, b"moved") == b"moved"
    assert not broker.running


def test_missing_mosquitto_binary_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGS_MOSQUITTO_BIN", "/nonexistent/mosquitto")
    with pytest.raises(ServiceUnavailableError, match=r"apt-get install mosquitto"):
        find_mosquitto()


def test_unreachable_postgres_says_how_to_start_it() -> None:
    with pytest.raises(ServiceUnavailableError, match=r"pg_ctlcluster 15 main start"):
        create_database("postgresql://postgres:secret@127.0.0.1:1/postgres")


def test_postgres_rows_round_trip(pg_database: PostgresDatabase, pg_url: str) -> None:
    assert pg_database.name.startswith("segs_test_")
    assert pg_url == pg_database.url
    assert pg_url.startswith("postgresql://")
    with psycopg.connect(pg_url, connect_timeout=10) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (pg_database.name,)
        conn.execute("CREATE TABLE harness_rows (id integer PRIMARY KEY, label text NOT NULL)")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO harness_rows (id, label) VALUES (%s, %s)",
                [(1, "one"), (2, "two"), (3, "three")],
            )
        rows = conn.execute("SELECT id, label FROM harness_rows ORDER BY id").fetchall()
        conn.rollback()
    assert rows == [(1, "one"), (2, "two"), (3, "three")]


def test_sqlalchemy_url_reaches_the_same_database(
    pg_database: PostgresDatabase, pg_sqlalchemy_url: str
) -> None:
    assert pg_sqlalchemy_url.startswith("postgresql+psycopg://")
    engine = sqlalchemy.create_engine(pg_sqlalchemy_url)
    try:
        with engine.connect() as conn:
            name = conn.execute(sqlalchemy.text("SELECT current_database()")).scalar_one()
    finally:
        engine.dispose()
    assert name == pg_database.name


def test_fresh_database_is_empty_and_separate(
    pg_fresh_database: PostgresDatabase, pg_database: PostgresDatabase
) -> None:
    assert pg_fresh_database.name != pg_database.name
    with psycopg.connect(pg_fresh_database.url, connect_timeout=10) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert tables == (0,)
