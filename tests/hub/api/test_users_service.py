"""``/api/v1/users``, ``/health``, ``/metrics`` and ``segs hub create-user``.

Profiles and preferences are checked in the HTTP answers and in the rows; the
health check against a real broker, a closed port, a database that is gone and
one that never answers; the metrics by route template; the command line by its
exit codes, its messages and the account it leaves behind.
"""

from __future__ import annotations

import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import jwt
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, make_url
from sqlmodel import Session, select

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apikit import PASSWORD, Api, bearer, error_of
from hubkit import T0, Clock, incoming, make_window, register, series, store_windows, window_batch
from services import MosquittoBroker, free_port

from segs.cli import main
from segs.hub.api import create_app
from segs.hub.db import DeadLetter, Meter, Role, User, UserPreferences
from segs.hub.settings import HubSettings
from segs.hub.store import Store

USERS: Final = "/api/v1/users"


def _row(engine: Engine, model: Any, key: str) -> Any:
    """A fresh read of one row."""
    with Session(engine) as session:
        return session.get(model, key)


# -- /users/me -------------------------------------------------------------------------------


def test_profile_read_and_update(api: Api) -> None:
    user_id = api.user("asha@example.com")
    api.user("ravi@example.com")
    headers = bearer(api, user_id)

    me = api.client.get(f"{USERS}/me", headers=headers)
    assert me.status_code == 200, me.text
    assert me.json() | {"created_at": None} == {
        "user_id": user_id,
        "email": "asha@example.com",
        "username": "asha",
        "role": "user",
        "region": None,
        "meter_id": None,
        "full_name": None,
        "phone": None,
        "status": "active",
        "email_verified": True,
        "otp_login": False,
        "created_at": None,
        "last_login_at": None,
    }

    api.clock.advance(60)
    changes = {"username": "asha.rao", "full_name": "Asha Rao", "phone": "+91 98765 43210"}
    response = api.client.put(f"{USERS}/me", json=changes, headers=headers)
    assert response.status_code == 200, response.text
    assert {name: response.json()[name] for name in changes} == changes
    row = _row(api.engine, User, user_id)
    assert (row.username, row.full_name, row.phone) == ("asha.rao", "Asha Rao", "+91 98765 43210")
    assert row.updated_at == api.clock.now
    # The token stays valid; the account is read again on every request.
    assert api.client.get("/api/v1/auth/me", headers=headers).json()["username"] == "asha.rao"

    error = error_of(
        api.client.put(f"{USERS}/me", json={"username": "ravi"}, headers=headers), 409, "conflict"
    )
    assert "ravi" in error["message"]
    assert _row(api.engine, User, user_id).username == "asha.rao"
    # Keeping one's own username is no conflict.
    response = api.client.put(f"{USERS}/me", json={"username": "asha.rao"}, headers=headers)
    assert response.status_code == 200, response.text

    # null clears the full name; the fields not sent stay as they are.
    response = api.client.put(f"{USERS}/me", json={"full_name": None}, headers=headers)
    assert response.status_code == 200, response.text
    assert (response.json()["full_name"], response.json()["phone"]) == (None, "+91 98765 43210")
    row = _row(api.engine, User, user_id)
    assert (row.username, row.full_name, row.phone) == ("asha.rao", None, "+91 98765 43210")
    # null does not clear what an account must have.
    response = api.client.put(
        f"{USERS}/me", json={"username": None, "otp_login": None}, headers=headers
    )
    assert response.status_code == 200, response.text
    assert (response.json()["username"], response.json()["otp_login"]) == ("asha.rao", False)

    for value in (True, False):
        response = api.client.put(f"{USERS}/me", json={"otp_login": value}, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["otp_login"] is value
        assert _row(api.engine, User, user_id).otp_login is value

    error = error_of(
        api.client.put(f"{USERS}/me", json={"username": "a b"}, headers=headers),
        422,
        "validation_error",
    )
    assert [detail["loc"] for detail in error["details"]] == [["body", "username"]]
    assert _row(api.engine, User, user_id).username == "asha.rao"


# -- /users/me/preferences -------------------------------------------------------------------

DEFAULTS: Final = {
    "email_notifications": True,
    "sms_notifications": False,
    "websocket_notifications": True,
    "alert_severity_threshold": "low",
}


def _stored(api: Api, user_id: str) -> dict[str, Any]:
    row = _row(api.engine, UserPreferences, user_id)
    assert row is not None
    return {name: getattr(row, name) for name in DEFAULTS}


def _preferences(body: dict[str, Any]) -> dict[str, Any]:
    return {name: body[name] for name in DEFAULTS}


def test_preferences_defaults_partial_updates_and_validation(api: Api) -> None:
    user_id = api.user("meera@example.com")
    headers = bearer(api, user_id)
    url = f"{USERS}/me/preferences"

    response = api.client.get(url, headers=headers)
    assert response.status_code == 200, response.text
    assert set(response.json()) == {*DEFAULTS, "updated_at"}
    assert _preferences(response.json()) == DEFAULTS

    api.clock.advance(60)
    response = api.client.put(
        url, json={"sms_notifications": True, "alert_severity_threshold": "high"}, headers=headers
    )
    assert response.status_code == 200, response.text
    expected = DEFAULTS | {"sms_notifications": True, "alert_severity_threshold": "high"}
    assert _preferences(response.json()) == expected
    assert _stored(api, user_id) == expected
    assert _row(api.engine, UserPreferences, user_id).updated_at == api.clock.now

    # Another partial update keeps the first one; null changes nothing.
    response = api.client.put(
        url, json={"email_notifications": False, "sms_notifications": None}, headers=headers
    )
    assert response.status_code == 200, response.text
    expected |= {"email_notifications": False}
    assert _stored(api, user_id) == expected
    assert _preferences(api.client.get(url, headers=headers).json()) == expected

    for bad in ({"alert_severity_threshold": "extreme"}, {"sms_notifications": "maybe"}):
        error = error_of(api.client.put(url, json=bad, headers=headers), 422, "validation_error")
        assert [detail["loc"] for detail in error["details"]] == [["body", *bad]]
    assert _stored(api, user_id) == expected

    # An account without a preferences row reads the defaults; an update creates the row.
    with Session(api.engine) as session:
        session.delete(session.get(UserPreferences, user_id))
        session.commit()
    assert _preferences(api.client.get(url, headers=headers).json()) == DEFAULTS
    response = api.client.put(url, json={"websocket_notifications": False}, headers=headers)
    assert response.status_code == 200, response.text
    assert _stored(api, user_id) == DEFAULTS | {"websocket_notifications": False}


# -- /health ---------------------------------------------------------------------------------


def test_health_reports_database_broker_and_ingest_lag(
    make_api: Callable[..., Api],
    mosquitto_session: MosquittoBroker,
    make_store: Callable[..., Store],
    clock: Clock,
) -> None:
    api = make_api(mqtt_url=mosquitto_session.url)
    response = api.client.get("/health")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["mode"], body["hub_id"]) == ("ok", "demo", "hub-1")
    assert body["database"]["ok"] is True
    assert body["database"]["latency_ms"] >= 0
    assert body["broker"] == {"ok": True, "latency_ms": body["broker"]["latency_ms"], "error": None}
    assert body["ingest_lag_s"] is None  # no load stored yet

    register(api.engine, gateways={"gw-1": ["MTR-1"]})
    store_windows(make_store(), clock, "gw-1", series("MTR-1", T0, 5, 3.0))
    # The newest stored minute is T0 + 4 min; it ends a minute later.
    api.clock.now = T0 + timedelta(minutes=5, seconds=30)
    assert api.client.get("/health").json()["ingest_lag_s"] == 30.0

    closed = make_api(mqtt_url=f"mqtt://127.0.0.1:{free_port()}")
    response = closed.client.get("/health")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "degraded"
    assert body["database"]["ok"] is True
    assert body["broker"]["ok"] is False
    assert body["broker"]["error"]


@pytest.fixture
def dead_database_urls(pg_sqlalchemy_url: str) -> list[str]:
    """A PostgreSQL port nobody listens on, and a database that does not exist (dropped)."""
    missing = make_url(pg_sqlalchemy_url).set(database=f"segs_dropped_{uuid.uuid4().hex[:8]}")
    return [
        "postgresql+psycopg://postgres@127.0.0.1:1/x",
        missing.render_as_string(hide_password=False),
    ]


def test_health_is_down_when_the_database_is_unreachable(
    dead_database_urls: list[str], mosquitto_session: MosquittoBroker
) -> None:
    for url in dead_database_urls:
        app = create_app(HubSettings(database_url=url, mqtt_url=mosquitto_session.url))
        try:
            with TestClient(app, raise_server_exceptions=False) as client:
                started = time.monotonic()
                response = client.get("/health")
                assert time.monotonic() - started < 5, url
                assert response.status_code == 503, response.text
                body = response.json()
                assert body["status"] == "down"
                assert body["database"]["ok"] is False
                assert body["database"]["error"] == "OperationalError"  # a name, no details
                assert body["broker"]["ok"] is True
                # Metrics still answer: monitoring must see the outage.
                metrics = client.get("/metrics")
                assert metrics.status_code == 200
                assert "segs_dead_letters" in metrics.text
        finally:
            app.state.context.engine.dispose()


@pytest.fixture
def silent_database() -> Iterator[tuple[str, socket.socket]]:
    """A 'PostgreSQL server' that accepts connections and never answers (hung or overloaded)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/segs", listener
    finally:
        listener.close()


def test_health_answers_when_the_database_never_does(
    silent_database: tuple[str, socket.socket], mosquitto_session: MosquittoBroker
) -> None:
    url, listener = silent_database
    app = create_app(HubSettings(database_url=url, mqtt_url=mosquitto_session.url))
    client = TestClient(app, raise_server_exceptions=False)
    answers: list[Any] = []
    request = threading.Thread(target=lambda: answers.append(client.get("/health")), daemon=True)
    request.start()
    request.join(timeout=10)
    answered_in_time = not request.is_alive()
    # Closing the listener resets the pending connection, which frees the request.
    listener.close()
    request.join(timeout=10)
    client.close()
    app.state.context.engine.dispose()
    assert answered_in_time, (
        "GET /health did not answer within 10 s while the database accepted the connection "
        "and never replied: no connect timeout on the database check"
    )
    (response,) = answers
    assert response.status_code == 503, response.text
    assert response.json()["database"]["ok"] is False


# -- /metrics --------------------------------------------------------------------------------


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _count(route: str, status: int) -> tuple[str, frozenset[tuple[str, str]]]:
    labels = {"method": "GET", "route": route, "status": str(status)}
    return "segs_http_request_duration_seconds_count", frozenset(labels.items())


def test_metrics_label_latency_by_route_template_and_count_dead_letters(
    api: Api, make_store: Callable[..., Store], clock: Clock
) -> None:
    register(api.engine, gateways={"gw-1": ["MTR-1"]})
    store = make_store()
    store_windows(store, clock, "gw-1", series("MTR-1", T0, 3, 2.0))
    future = make_window("MTR-1", clock.now + timedelta(days=1))
    assert store.commit([incoming(window_batch("gw-1", 10_000, [future]))]).dead_letters == 1
    api.clock.now = T0 + timedelta(hours=1)
    headers = bearer(api, api.user("adil@example.com", role=Role.ADMIN))

    for _ in range(2):
        assert api.client.get(f"{USERS}/me", headers=headers).status_code == 200
    history = "/api/v1/telemetry/operator/meters/{meter}/history"
    range_ = {"from": T0.isoformat(), "to": (T0 + timedelta(hours=1)).isoformat()}
    ok = api.client.get(history.format(meter="MTR-1"), params=range_, headers=headers)
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["points"]) == 3
    unknown = api.client.get(history.format(meter="MTR-404"), params=range_, headers=headers)
    assert unknown.status_code == 404
    assert api.client.get("/api/v1/no-such-thing").status_code == 404

    response = api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    line = (
        'segs_http_request_duration_seconds_count{method="GET",route="/api/v1/users/me",'
        'status="200"}'
    )
    assert line in text
    samples = _samples(text)
    template = "/api/v1/telemetry/operator/meters/{meter_id}/history"
    assert samples[_count("/api/v1/users/me", 200)] == 2.0
    assert samples[_count(template, 200)] == 1.0
    assert samples[_count(template, 404)] == 1.0
    assert samples[_count("unmatched", 404)] == 1.0
    # Raw paths never become labels: their number is unbounded.
    assert "MTR-" not in text
    assert "no-such-thing" not in text
    with Session(api.engine) as session:
        reasons = [row.reason for row in session.exec(select(DeadLetter)).all()]
    assert reasons == ["future_window"]
    assert samples[("segs_dead_letters", frozenset({("reason", "future_window")}))] == 1.0


# -- segs hub create-user --------------------------------------------------------------------


def _create_user(*args: str) -> int:
    return main(["hub", "create-user", *args])


def test_create_user_command(
    api: Api,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    register(api.engine, gateways={"gw-1": ["MTR-1"]})
    monkeypatch.setenv("SEGS_DATABASE_URL", database_url)
    email = "kavya@example.com"

    assert _create_user("--email", email, "--password", "kavya12", "--meter", "MTR-1") == 1
    err = capsys.readouterr().err
    assert "the password does not meet the policy" in err
    assert "at least 10 characters" in err
    assert _create_user("--email", email, "--password", PASSWORD, "--meter", "MTR-404") == 1
    assert "no meter 'MTR-404' in the registry" in capsys.readouterr().err
    assert _create_user("--email", email, "--password", PASSWORD, "--role", "operator") == 1
    assert "an operator needs a region" in capsys.readouterr().err
    with Session(api.engine) as session:
        assert session.exec(select(User)).all() == []

    assert _create_user("--email", email, "--password", PASSWORD, "--meter", "MTR-1") == 0
    out = capsys.readouterr().out
    match = re.search(r"\bid ([0-9a-f-]{36})\b", out)
    assert match is not None, out
    user_id = match.group(1)
    assert f"created user {email} (username kavya" in out
    user = _row(api.engine, User, user_id)
    assert (user.email, user.role, user.region, user.status) == (
        email,
        "user",
        "Pune-West",
        "active",
    )
    assert _row(api.engine, Meter, "MTR-1").customer_id == user_id

    # The account signs in through the API; its token names its meter.
    tokens = api.login(email)
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert (claims["userId"], claims["meterId"], claims["role"], claims["region"]) == (
        user_id,
        "MTR-1",
        "user",
        "Pune-West",
    )
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    error = error_of(api.client.get("/api/v1/telemetry/my/latest", headers=headers), 404)
    assert error["message"] == "your meter has not reported yet"
