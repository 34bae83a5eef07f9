"""schemathesis against the API's own OpenAPI document, signed in as each role and anonymous.

Every operation of ``/openapi.json`` is fuzzed (schemathesis' coverage and
fuzzing phases, valid and invalid requests) once per caller: anonymous, a
customer with a meter, the operator of that meter's region and an admin, each
with an access token from a real sign-in. Every response must pass
:data:`CHECKS`: no 5xx, and a status code, content type, required headers and
body as the document declares them for that operation and status.

The database is a PostgreSQL database of this module's own, migrated and seeded
through the ingest store (as ingest writes, so rollups and regional load are
the production ones): two regions, a gateway each, three meters, 36 hours of
minute windows. The app's clock stands still at the end of the newest window,
so requests without ``from``/``to`` cover the data. A fuzz dictionary
(:data:`FUZZ_CONFIG`) puts the seeded meter ids and regions into path and query
parameters half of the time (random ones almost never name a row), times at
the edges of what a datetime holds into ``from``/``to``, and NUL bytes and the
like into free text. :func:`test_known_requests` then sends each operation once
with real values per caller and checks the statuses and that data came back,
and :func:`test_account_flow` walks the account operations whose success needs
a secret the fuzzer cannot guess (a mailed code, a refresh token, the password).

Nothing is excluded. The accounts exist for this module alone; the fuzzer can
change their profile and preferences but cannot sign them out (that needs the
password or a refresh token). Runs are deterministic (derandomized Hypothesis,
no example database written).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apikit import PASSWORD, Api
from hubkit import Clock, birth, incoming, make_window, register, window_batch
from services import create_database, drop_database

from segs.hub.api import create_app
from segs.hub.db import Role
from segs.hub.db.engine import make_engine
from segs.hub.db.migrate import migrate
from segs.hub.settings import HubSettings
from segs.hub.store import StoreOptions, open_store
from segs.protocol import Window, limits

ROLES: Final = ("anonymous", "user", "operator", "admin")
CHECKS: Final = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

REGION, OTHER_REGION = "Pune-West", "Pune-East"
MY_METER, NEIGHBOUR, FOREIGN = "MTR-S-1", "MTR-S-2", "MTR-S-3"
POWER_KW: Final = {MY_METER: 1.5, NEIGHBOUR: 2.5, FOREIGN: 3.5}
HOURS: Final = 36
NOW: Final = datetime.now(UTC).replace(second=0, microsecond=0)
START: Final = NOW - timedelta(hours=HOURS)

FUZZ_CONFIG: Final[dict[str, Any]] = {
    "generation": {
        # Per operation and caller, on top of the coverage phase's few dozen
        # deterministic cases: the module runs in about a minute on 2 cores.
        "max-examples": 8,
        "deterministic": True,
        "database": "none",
        # Failures are reported as found: the dictionary values are small already, and
        # shrinking a few dozen failures would double a failing run's time.
        "no-shrink": True,
    },
    # Generation must not depend on earlier answers (the same run twice fuzzes the same).
    "phases": {
        "examples": {"extra-data-sources": {"responses": False}},
        "coverage": {"extra-data-sources": {"responses": False}},
        "fuzzing": {
            "extra-data-sources": {"responses": False},
            "error-feedback": {"enabled": False},
        },
    },
    "dictionaries": {
        "meters": {"values": [MY_METER, NEIGHBOUR, FOREIGN, "MTR-UNKNOWN", "a\x00b"]},
        "regions": {"values": [REGION, OTHER_REGION, "Nowhere", "a\x00b"]},
        "times": {
            "values": [
                START.isoformat(),
                NOW.isoformat(),
                "0001-01-01T00:00:00Z",
                "0001-01-01T00:30:00+01:00",
                "9999-12-31T23:59:59Z",
                "9999-12-31T23:30:00-01:00",
                "2026-01-01T00:00:00",
            ]
        },
        "text": {"values": ["a\x00b", "\x00", "\U0001f600", " ", "x" * 200]},
    },
    "parameters": {
        "meter_id": {"dictionary": "meters", "probability": 0.5},
        "region": {"dictionary": "regions", "probability": 0.5},
        "from": {"dictionary": "times", "probability": 0.5},
        "to": {"dictionary": "times", "probability": 0.5},
        "body.full_name": {"dictionary": "text", "probability": 0.3},
        "body.password": {"dictionary": "text", "probability": 0.3},
        "body.new_password": {"dictionary": "text", "probability": 0.3},
        "body.refresh_token": {"dictionary": "text", "probability": 0.3},
    },
}


def _document() -> dict[str, Any]:
    """The app's OpenAPI document. It depends on the routes alone, so an app on a
    database that is never opened serves it at collection time."""
    settings = HubSettings(database_url="sqlite:///openapi-only.db", mode="demo")
    engine = make_engine(settings.database_url)
    try:
        document: dict[str, Any] = create_app(settings, engine=engine).openapi()
    finally:
        engine.dispose()
    return document


DOCUMENT: Final = _document()
schema = schemathesis.openapi.from_dict(DOCUMENT, config=schemathesis.Config.from_dict(FUZZ_CONFIG))


# -- the seeded app --------------------------------------------------------------------------


@dataclass
class Seeded:
    """The app on the seeded database, its test client and an access token per signed-in role."""

    app: FastAPI
    api: Api
    tokens: dict[str, str]

    def headers(self, role: str) -> dict[str, str]:
        """The role's Authorization header (none for anonymous)."""
        if role == "anonymous":
            return {}
        return {"Authorization": f"Bearer {self.tokens[role]}"}


def _windows(meter_id: str, power_kw: float) -> list[Window]:
    """One minute window per minute from ``START`` to ``NOW``, counters continuous."""
    delta = power_kw / 60.0
    return [
        make_window(
            meter_id,
            START + timedelta(minutes=i),
            import_kwh=1000.0 + delta * (i + 1),
            import_delta_kwh=delta,
            power_kw=power_kw,
        )
        for i in range(HOURS * 60)
    ]


def _seed(url: str, clock: Clock) -> None:
    """Regions, gateways, meters and their windows, through the store as ingest writes them."""
    gateways = {"gw-s-1": (REGION, (MY_METER, NEIGHBOUR)), "gw-s-2": (OTHER_REGION, (FOREIGN,))}
    engine = make_engine(url)
    for gateway, (region, meters) in gateways.items():
        register(engine, region=region, gateways={gateway: meters})
    engine.dispose()
    store = open_store(url, options=StoreOptions(), clock=clock)
    try:
        seq = 0
        for gateway, (region, meters) in gateways.items():
            store.commit([incoming(birth(gateway, region, meters))])
            for meter in meters:
                windows = _windows(meter, POWER_KW[meter])
                for i in range(0, len(windows), limits.MAX_WINDOWS_PER_BATCH):
                    seq += 1
                    chunk = windows[i : i + limits.MAX_WINDOWS_PER_BATCH]
                    result = store.commit([incoming(window_batch(gateway, seq, chunk))])
                    assert result.windows_stored == len(chunk)
    finally:
        store.close()


@pytest.fixture(scope="module")
def seeded() -> Iterator[Seeded]:
    """A migrated, seeded PostgreSQL database of this module's own, and the app on it."""
    database = create_database(prefix="segs_schema_")
    try:
        migrate(database.sqlalchemy_url)
        clock = Clock(NOW)
        _seed(database.sqlalchemy_url, clock)
        settings = HubSettings(database_url=database.sqlalchemy_url, mode="demo")
        engine = make_engine(settings.database_url)
        app = create_app(settings, engine=engine, clock=clock)
        client = TestClient(app, raise_server_exceptions=False)
        api = Api(client=client, engine=engine, clock=clock, settings=settings)
        api.user("user@example.com", meter=MY_METER)
        api.user("operator@example.com", role=Role.OPERATOR, region=REGION)
        api.user("admin@example.com", role=Role.ADMIN)
        tokens = {role: api.login(f"{role}@example.com")["access_token"] for role in ROLES[1:]}
        yield Seeded(app, api, tokens)
        api.close()
    finally:
        drop_database(database)


def _send(
    seeded: Seeded,
    role: str,
    method: str,
    path: str,
    *,
    path_parameters: dict[str, Any] | None = None,
    query: dict[str, Any] | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> Any:
    """Send a request built from the document's operation; fail unless it passes :data:`CHECKS`."""
    operation = schema[path][method]
    case = operation.Case(
        path_parameters=path_parameters,
        query=query,
        headers={**seeded.headers(role), **(headers or {})},
        **({} if body is None else {"body": body}),
    )
    return case.call_and_validate(app=seeded.app, checks=CHECKS)


# -- known requests --------------------------------------------------------------------------

T = "/api/v1/telemetry"
_MINE = {"anonymous": 401, "user": 200, "operator": 404, "admin": 404}
_OPERATORS = {"anonymous": 401, "user": 403, "operator": 200, "admin": 200}
_ANYONE_SIGNED_IN = {"anonymous": 401, "user": 200, "operator": 200, "admin": 200}
_RANGE = {"from": START.isoformat(), "to": NOW.isoformat()}

KNOWN: Final[list[tuple[str, str, dict[str, Any], dict[str, int]]]] = [
    ("GET", "/api/v1/auth/me", {}, _ANYONE_SIGNED_IN),
    ("GET", "/api/v1/users/me", {}, _ANYONE_SIGNED_IN),
    ("PUT", "/api/v1/users/me", {"body": {"full_name": "Known Name"}}, _ANYONE_SIGNED_IN),
    ("GET", "/api/v1/users/me/preferences", {}, _ANYONE_SIGNED_IN),
    (
        "PUT",
        "/api/v1/users/me/preferences",
        {"body": {"sms_notifications": True, "alert_severity_threshold": "high"}},
        _ANYONE_SIGNED_IN,
    ),
    ("GET", f"{T}/my/latest", {}, _MINE),
    ("GET", f"{T}/my/history", {}, _MINE),
    ("GET", f"{T}/my/history", {"query": {**_RANGE, "resolution": "1d"}}, _MINE),
    ("GET", f"{T}/my/stats", {"query": _RANGE}, _MINE),
    ("GET", f"{T}/my/breakdown", {"query": {**_RANGE, "by": "day"}}, _MINE),
    ("GET", f"{T}/my/compare", {"query": {"period": "day"}}, _MINE),
    (
        "GET",
        f"{T}/operator/meters/{{meter_id}}/history",
        {"path_parameters": {"meter_id": NEIGHBOUR}, "query": {**_RANGE, "resolution": "15m"}},
        _OPERATORS,
    ),
    (
        "GET",
        f"{T}/operator/meters/{{meter_id}}/history",
        {"path_parameters": {"meter_id": FOREIGN}},
        _OPERATORS | {"operator": 404},
    ),
    (
        "GET",
        f"{T}/operator/regions/{{region}}/stats",
        {"path_parameters": {"region": REGION}, "query": _RANGE},
        _OPERATORS,
    ),
    (
        "GET",
        f"{T}/operator/regions/{{region}}/stats",
        {"path_parameters": {"region": OTHER_REGION}},
        _OPERATORS | {"operator": 403},
    ),
    ("GET", f"{T}/operator/top-consumers", {"query": _RANGE}, _OPERATORS),
    ("GET", f"{T}/operator/meters/status", {}, _OPERATORS),
    ("GET", f"{T}/operator/regions/summary", {}, _OPERATORS),
    ("GET", "/health", {}, dict.fromkeys(ROLES, 200)),
    ("GET", "/metrics", {}, dict.fromkeys(ROLES, 200)),
]


def _has_data(path: str, body: Any) -> bool:
    """Whether a 200 body carries seeded data (not just an empty shape)."""
    if path.endswith(("/history", "/stats")) and "points" in body:
        return bool(body["points"])
    if path.endswith("/my/stats"):
        return bool(body["windows"])
    if path.endswith("/breakdown"):
        return any(bucket["windows"] for bucket in body["buckets"])
    if path.endswith("/compare"):
        return bool(body["current"]["windows"] and body["previous"]["windows"])
    if path.endswith(("/top-consumers", "/meters/status", "/regions/summary")):
        return bool(body)
    return True


@pytest.mark.parametrize("role", ROLES)
def test_known_requests(seeded: Seeded, role: str) -> None:
    """Each operation once with real values: the expected status, as documented, with data."""
    # Every operation of the document is here or in test_account_flow.
    covered = {(method, path) for method, path, _, _ in KNOWN} | ACCOUNT_FLOW
    assert covered == {
        (method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item
    }
    for method, path, request, expected in KNOWN:
        response = _send(seeded, role, method, path, **request)
        assert response.status_code == expected[role], (method, path, response.text)
        if response.status_code == 200 and path != "/metrics":
            assert _has_data(path, response.json()), (method, path, response.text)
    if role == "operator":
        rows = _send(seeded, role, "GET", f"{T}/operator/meters/status").json()
        assert {row["meter_id"] for row in rows} == {MY_METER, NEIGHBOUR}
    if role == "admin":
        rows = _send(seeded, role, "GET", f"{T}/operator/top-consumers", query=_RANGE).json()
        assert [row["meter_id"] for row in rows] == [FOREIGN, NEIGHBOUR, MY_METER]


A = "/api/v1/auth"
ACCOUNT_FLOW: Final = {
    ("POST", f"{A}/{action}")
    for action in (
        "register",
        "verify-otp",
        "resend-otp",
        "login",
        "refresh",
        "logout",
        "forgot-password",
        "reset-password",
        "change-password",
    )
}


def test_account_flow(seeded: Seeded) -> None:
    """The account operations' success answers (they need secrets the fuzzer cannot guess)."""
    api, email, username = seeded.api, "throwaway@example.com", "throwaway"
    new_password, third_password = "another-long-pass-phrase", "a-third-long-pass-phrase"

    def post(action: str, expected: int, body: dict[str, Any], **kwargs: Any) -> Any:
        response = _send(seeded, "anonymous", "POST", f"{A}/{action}", body=body, **kwargs)
        assert response.status_code == expected, (action, response.text)
        return response

    post("register", 202, {"email": email, "username": username, "password": PASSWORD})
    post("resend-otp", 202, {"email": email})
    post("verify-otp", 200, {"email": email, "otp": api.code(email)})
    tokens = post("login", 200, {"email": email, "password": PASSWORD}).json()
    tokens = post("refresh", 200, {"refresh_token": tokens["refresh_token"]}).json()
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    post(
        "change-password",
        200,
        {"current_password": PASSWORD, "new_password": new_password},
        headers=bearer,
    )
    post("forgot-password", 202, {"email": email})
    body = {"email": email, "otp": api.code(email), "new_password": third_password}
    post("reset-password", 200, body)
    tokens = post("login", 200, {"email": email, "password": third_password}).json()
    post("logout", 204, {"refresh_token": tokens["refresh_token"]})
    post("refresh", 401, {"refresh_token": tokens["refresh_token"]})


# -- fuzzing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
@schema.parametrize()
def test_fuzz(case: schemathesis.Case[Any], role: str, seeded: Seeded) -> None:
    """No 5xx, and every response as documented, for whatever the fuzzer sends as ``role``."""
    # A signed-in caller's token replaces the random one schemathesis generates for the
    # security scheme; anonymous callers keep that one (or send none).
    case.headers.update(seeded.headers(role))
    case.call_and_validate(app=seeded.app, checks=CHECKS)
