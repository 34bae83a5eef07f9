"""Access control: every endpoint x role x own/other resource answers 2xx, 401, 403 or 404.

The matrix is a table keyed by the app's own routes: a route the table does not
list fails :func:`test_every_route_is_in_the_matrix`, so a new endpoint cannot
ship without its access rules. Each row lists concrete requests (own meter,
another customer's meter, the operator's region, another region, unknown ids)
and the status each role must get; 2xx answers are also checked to hold the
caller's data only, error answers to have the one error shape.

The world: regions Pune-West (meters MTR-1 of ``user``, MTR-2 of nobody) and
Delhi-North (MTR-3 of ``other-user``); ``user-without-meter``; an operator of
Pune-West; an admin. Each meter draws its own constant power for the hour from
``T0``, so energies tell whose data an answer holds.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

import pytest
from fastapi import routing
from fastapi.routing import APIRoute

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apikit import Api, bearer, error_of
from hubkit import T0, Clock, register, series, store_windows

from segs.hub.api import API_PREFIX, create_app
from segs.hub.db import Role
from segs.hub.settings import HubSettings
from segs.hub.store import Store

HOUR: Final = timedelta(hours=1)

ANON: Final = "anonymous"
GARBAGE: Final = "garbage-token"
USER: Final = "user"
OTHER: Final = "other-user"
NOMETER: Final = "user-without-meter"
OPERATOR: Final = "operator"
ADMIN: Final = "admin"
ROLES: Final = (ANON, GARBAGE, USER, OTHER, NOMETER, OPERATOR, ADMIN)

PUNE: Final = "Pune-West"
DELHI: Final = "Delhi-North"
EMAILS: Final = {
    USER: "alice@example.com",
    OTHER: "bobby@example.com",
    NOMETER: "chitra@example.com",
    OPERATOR: "opal@example.com",
    ADMIN: "adil@example.com",
}
METER_OF: Final = {USER: "MTR-1", OTHER: "MTR-3"}
REGION_OF: Final = {"MTR-1": PUNE, "MTR-2": PUNE, "MTR-3": DELHI}
POWER: Final = {"MTR-1": 2.0, "MTR-2": 5.0, "MTR-3": 11.0}
"""Constant kW of each meter over the hour of windows: also its energy in kWh."""
WINDOWS: Final = 60

PUBLIC_AUTH: Final = frozenset(
    f"{API_PREFIX}/auth/{action}"
    for action in (
        "register",
        "verify-otp",
        "resend-otp",
        "login",
        "refresh",
        "logout",
        "forgot-password",
        "reset-password",
    )
)
"""The only ``/api/v1`` routes that answer without a token."""
SERVICE: Final = frozenset({"/health", "/metrics"})
DOCS: Final = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect"})
"""FastAPI's own documentation routes (not API endpoints)."""

RANGE: Final = {"from": T0.isoformat(), "to": (T0 + HOUR).isoformat()}


# -- what the roles see ----------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """The accounts of the test, by role."""

    ids: Mapping[str, str]
    headers: Mapping[str, Mapping[str, str]]


Check = Callable[[Any, str, World], None]
"""Asserts what a 2xx body holds for a role."""


def is_caller(body: Any, role: str, world: World) -> None:
    assert body["user_id"] == world.ids[role], body
    assert body["meter_id"] == METER_OF.get(role), body


def own_meter(energy: Callable[[Any], float]) -> Check:
    """The body is about the caller's meter, with that meter's energy."""

    def check(body: Any, role: str, _world: World) -> None:
        meter = METER_OF[role]
        assert body["meter_id"] == meter, (body["meter_id"], meter)
        assert energy(body) == pytest.approx(POWER[meter]), meter

    return check


def latest_is_own(body: Any, role: str, _world: World) -> None:
    meter = METER_OF[role]
    assert body["meter_id"] == meter, body
    assert body["region"] == REGION_OF[meter], body
    newest = T0 + (WINDOWS - 1) * timedelta(minutes=1)
    assert datetime.fromisoformat(body["window_start"]) == newest, body
    assert body["power_avg_kw"] == pytest.approx(POWER[meter]), body


def meter_history(meter: str) -> Check:
    def check(body: Any, _role: str, _world: World) -> None:
        assert body["meter_id"] == meter, body["meter_id"]
        assert len(body["points"]) == WINDOWS
        assert sum(p["import_kwh"] for p in body["points"]) == pytest.approx(POWER[meter])

    return check


def region_stats(region: str) -> Check:
    def check(body: Any, _role: str, _world: World) -> None:
        assert body["region"] == region, body["region"]
        load = sum(kw for meter, kw in POWER.items() if REGION_OF[meter] == region)
        assert body["peak_kw"] == pytest.approx(load), region
        assert body["minutes"] == WINDOWS

    return check


def meters_seen(by_role: Mapping[str, set[str]]) -> Check:
    """A list of meter rows holds exactly the meters the role may see, each in its region."""

    def check(body: Any, role: str, _world: World) -> None:
        seen = {row["meter_id"] for row in body}
        assert seen == by_role[role], (sorted(seen), sorted(by_role[role]))
        for row in body:
            assert row["region"] == REGION_OF[row["meter_id"]], row

    return check


def regions_seen(by_role: Mapping[str, list[str]]) -> Check:
    def check(body: Any, role: str, _world: World) -> None:
        assert [row["region"] for row in body] == by_role[role], body

    return check


# -- the matrix ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One concrete request and the status each role must get."""

    method: str
    path: str
    expect: Mapping[str, int]
    params: Mapping[str, str] = field(default_factory=dict)
    json: Any = None
    check: Check | None = None


def everyone(status: int) -> dict[str, int]:
    """A route without a token: the same answer for every caller, whatever the token."""
    return dict.fromkeys(ROLES, status)


def signed_in(
    *, user: int, nometer: int | None = None, operator: int, admin: int
) -> dict[str, int]:
    """A route that needs a token: 401 without one or with garbage; ``user`` covers both
    metered customers."""
    return {
        ANON: 401,
        GARBAGE: 401,
        USER: user,
        OTHER: user,
        NOMETER: user if nometer is None else nometer,
        OPERATOR: operator,
        ADMIN: admin,
    }


MY: Final = signed_in(user=200, nometer=404, operator=404, admin=404)
"""``my/...``: the caller's meter; 404 for every account without one."""
OPERATORS: Final = signed_in(user=403, operator=200, admin=200)
ADMINS: Final = signed_in(user=403, operator=403, admin=200)
NO_ONE: Final = signed_in(user=403, operator=403, admin=404)
HIDDEN: Final = signed_in(user=403, operator=404, admin=200)
"""A meter outside the operator's region: 404, as if it did not exist."""
UNKNOWN: Final = signed_in(user=403, operator=404, admin=404)
EVERY_ACCOUNT: Final = signed_in(user=200, operator=200, admin=200)

V1: Final = API_PREFIX
TM: Final = f"{API_PREFIX}/telemetry"
ALL_METERS: Final = {"MTR-1", "MTR-2", "MTR-3"}
PUNE_METERS: Final = {"MTR-1", "MTR-2"}


def _get(path: str, expect: Mapping[str, int], check: Check | None = None, **params: str) -> Case:
    return Case("GET", path, expect, params=params, check=check)


def _post(path: str, expect: Mapping[str, int], body: Any) -> Case:
    return Case("POST", path, expect, json=body)


NOBODY: Final = {"email": "nobody@example.com"}

MATRIX: Final[dict[tuple[str, str], tuple[Case, ...]]] = {
    # Public: an empty body is refused by validation, not by authentication.
    ("POST", f"{V1}/auth/register"): (_post(f"{V1}/auth/register", everyone(422), {}),),
    ("POST", f"{V1}/auth/verify-otp"): (_post(f"{V1}/auth/verify-otp", everyone(422), {}),),
    ("POST", f"{V1}/auth/resend-otp"): (_post(f"{V1}/auth/resend-otp", everyone(202), NOBODY),),
    ("POST", f"{V1}/auth/login"): (_post(f"{V1}/auth/login", everyone(422), {}),),
    ("POST", f"{V1}/auth/refresh"): (_post(f"{V1}/auth/refresh", everyone(422), {}),),
    ("POST", f"{V1}/auth/logout"): (
        _post(f"{V1}/auth/logout", everyone(204), {"refresh_token": "not-a-refresh-token"}),
    ),
    ("POST", f"{V1}/auth/forgot-password"): (
        _post(f"{V1}/auth/forgot-password", everyone(202), NOBODY),
    ),
    ("POST", f"{V1}/auth/reset-password"): (_post(f"{V1}/auth/reset-password", everyone(422), {}),),
    # Signed in: an empty body passes authentication, then fails validation.
    ("POST", f"{V1}/auth/change-password"): (
        _post(f"{V1}/auth/change-password", signed_in(user=422, operator=422, admin=422), {}),
    ),
    ("GET", f"{V1}/auth/me"): (_get(f"{V1}/auth/me", EVERY_ACCOUNT, is_caller),),
    ("GET", f"{V1}/users/me"): (_get(f"{V1}/users/me", EVERY_ACCOUNT, is_caller),),
    ("PUT", f"{V1}/users/me"): (
        Case("PUT", f"{V1}/users/me", EVERY_ACCOUNT, json={}, check=is_caller),
    ),
    ("GET", f"{V1}/users/me/preferences"): (_get(f"{V1}/users/me/preferences", EVERY_ACCOUNT),),
    ("PUT", f"{V1}/users/me/preferences"): (
        Case("PUT", f"{V1}/users/me/preferences", EVERY_ACCOUNT, json={}),
    ),
    # The caller's meter.
    ("GET", f"{TM}/my/latest"): (_get(f"{TM}/my/latest", MY, latest_is_own),),
    ("GET", f"{TM}/my/history"): (
        _get(
            f"{TM}/my/history",
            MY,
            own_meter(lambda body: sum(p["import_kwh"] for p in body["points"])),
            **RANGE,
        ),
    ),
    ("GET", f"{TM}/my/stats"): (
        _get(f"{TM}/my/stats", MY, own_meter(lambda body: body["import_kwh"]), **RANGE),
    ),
    ("GET", f"{TM}/my/breakdown"): (
        _get(
            f"{TM}/my/breakdown",
            MY,
            own_meter(lambda body: sum(b["import_kwh"] for b in body["buckets"])),
            **RANGE,
        ),
    ),
    ("GET", f"{TM}/my/compare"): (
        _get(f"{TM}/my/compare", MY, own_meter(lambda body: body["current"]["import_kwh"])),
    ),
    # Operators (their region) and admins (everything).
    ("GET", f"{TM}/operator/meters/{{meter_id}}/history"): (
        _get(f"{TM}/operator/meters/MTR-1/history", OPERATORS, meter_history("MTR-1"), **RANGE),
        _get(f"{TM}/operator/meters/MTR-2/history", OPERATORS, meter_history("MTR-2"), **RANGE),
        _get(f"{TM}/operator/meters/MTR-3/history", HIDDEN, meter_history("MTR-3"), **RANGE),
        _get(f"{TM}/operator/meters/MTR-404/history", UNKNOWN, **RANGE),
    ),
    ("GET", f"{TM}/operator/regions/{{region}}/stats"): (
        _get(f"{TM}/operator/regions/{PUNE}/stats", OPERATORS, region_stats(PUNE), **RANGE),
        _get(f"{TM}/operator/regions/{DELHI}/stats", ADMINS, region_stats(DELHI), **RANGE),
        _get(f"{TM}/operator/regions/Nowhere/stats", NO_ONE, **RANGE),
    ),
    ("GET", f"{TM}/operator/top-consumers"): (
        _get(
            f"{TM}/operator/top-consumers",
            OPERATORS,
            meters_seen({OPERATOR: PUNE_METERS, ADMIN: ALL_METERS}),
            **RANGE,
        ),
        _get(
            f"{TM}/operator/top-consumers",
            OPERATORS,
            meters_seen({OPERATOR: PUNE_METERS, ADMIN: PUNE_METERS}),
            region=PUNE,
            **RANGE,
        ),
        _get(
            f"{TM}/operator/top-consumers",
            ADMINS,
            meters_seen({ADMIN: {"MTR-3"}}),
            region=DELHI,
            **RANGE,
        ),
    ),
    ("GET", f"{TM}/operator/meters/status"): (
        _get(
            f"{TM}/operator/meters/status",
            OPERATORS,
            meters_seen({OPERATOR: PUNE_METERS, ADMIN: ALL_METERS}),
        ),
        _get(
            f"{TM}/operator/meters/status",
            OPERATORS,
            meters_seen({OPERATOR: PUNE_METERS, ADMIN: PUNE_METERS}),
            region=PUNE,
        ),
        _get(f"{TM}/operator/meters/status", ADMINS, meters_seen({ADMIN: {"MTR-3"}}), region=DELHI),
    ),
    ("GET", f"{TM}/operator/regions/summary"): (
        _get(
            f"{TM}/operator/regions/summary",
            OPERATORS,
            regions_seen({OPERATOR: [PUNE], ADMIN: [DELHI, PUNE]}),
        ),
    ),
    # Monitoring: no token needed, none looked at.
    ("GET", "/health"): (_get("/health", everyone(200)),),
    ("GET", "/metrics"): (_get("/metrics", everyone(200)),),
}


def served_routes(app: Any) -> dict[tuple[str, str], Any]:
    """Every (method, path template) the app serves, included routers walked through;
    FastAPI's documentation routes left out."""
    served: dict[tuple[str, str], Any] = {}
    for context in routing.iter_route_contexts(app.routes):
        path = context.path
        if path in DOCS:
            continue
        assert isinstance(context.original_route, APIRoute), (
            f"{path}: a {type(context.original_route).__name__}, not an APIRoute; "
            "give it access expectations here"
        )
        for method in context.methods or ():
            served[(method, path)] = context
    return served


def test_every_route_is_in_the_matrix(tmp_path: Path) -> None:
    app = create_app(HubSettings(database_url=f"sqlite:///{tmp_path / 'routes.db'}"))
    served = served_routes(app)
    # The walk must see at least what the OpenAPI document lists.
    documented = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    assert documented <= set(served), sorted(documented - set(served))
    uncovered = sorted(set(served) - set(MATRIX))
    assert not uncovered, f"routes without access expectations in MATRIX: {uncovered}"
    stale = sorted(set(MATRIX) - set(served))
    assert not stale, f"MATRIX lists routes the app does not serve: {stale}"

    for (method, template), cases in MATRIX.items():
        assert template.startswith(f"{API_PREFIX}/") or template in SERVICE, template
        assert cases, template
        public = template in PUBLIC_AUTH or template in SERVICE
        for case in cases:
            assert set(case.expect) == set(ROLES), (template, case.path)
            if public:
                assert case.expect[ANON] != 401, (template, "public routes need no token")
            else:
                assert case.expect[ANON] == case.expect[GARBAGE] == 401, template
            # The concrete request is routed to the template it is listed under.
            matched = [
                key
                for key, context in served.items()
                if key[0] == case.method and context.path_regex.match(case.path)
            ]
            assert matched == [(method, template)], (case.path, matched)


# -- the matrix, run on both backends --------------------------------------------------------


def _code(status: int, role: str) -> str:
    if status == 401:
        return "unauthorized" if role == ANON else "invalid_token"
    return {403: "forbidden", 404: "not_found", 422: "validation_error"}[status]


@pytest.fixture
def world(api: Api, make_store: Callable[..., Store], clock: Clock) -> World:
    """Two regions, three meters with an hour of windows each, an account per role."""
    api.clock.now = T0 + HOUR + timedelta(minutes=1)
    register(api.engine, region=PUNE, capacity_kw=100.0, gateways={"gw-1": ["MTR-1", "MTR-2"]})
    register(api.engine, region=DELHI, capacity_kw=50.0, gateways={"gw-2": ["MTR-3"]})
    store = make_store()
    store_windows(
        store,
        clock,
        "gw-1",
        series("MTR-1", T0, WINDOWS, POWER["MTR-1"]) + series("MTR-2", T0, WINDOWS, POWER["MTR-2"]),
    )
    store_windows(store, clock, "gw-2", series("MTR-3", T0, WINDOWS, POWER["MTR-3"]))
    ids = {
        USER: api.user(EMAILS[USER], meter="MTR-1"),
        OTHER: api.user(EMAILS[OTHER], meter="MTR-3"),
        NOMETER: api.user(EMAILS[NOMETER]),
        OPERATOR: api.user(EMAILS[OPERATOR], role=Role.OPERATOR, region=PUNE),
        ADMIN: api.user(EMAILS[ADMIN], role=Role.ADMIN),
    }
    headers: dict[str, Mapping[str, str]] = {
        ANON: {},
        GARBAGE: {"Authorization": "Bearer not-a-token"},
    }
    # One real sign-in; the other tokens are issued as sign-in issues them (argon2 is slow).
    headers[USER] = api.headers(EMAILS[USER])
    headers |= {role: bearer(api, ids[role]) for role in (OTHER, NOMETER, OPERATOR, ADMIN)}
    return World(ids=ids, headers=headers)


def test_access_matrix(api: Api, world: World) -> None:
    problems: list[str] = []
    for cases in MATRIX.values():
        for case in cases:
            for role in ROLES:
                response = api.client.request(
                    case.method,
                    case.path,
                    params=dict(case.params),
                    json=case.json,
                    headers=dict(world.headers[role]),
                )
                where = f"{role:>18}  {case.method} {case.path} {dict(case.params)}"
                expected = case.expect[role]
                try:
                    _check_answer(response, expected, role, case, world)
                except AssertionError as exc:
                    problems.append(
                        f"{where}: expected {expected}, got {response.status_code}: {exc}"
                    )
    assert not problems, "\n".join(problems)


def _check_answer(response: Any, expected: int, role: str, case: Case, world: World) -> None:
    assert response.status_code == expected, response.text[:300]
    if expected >= 400:
        error_of(response, expected, _code(expected, role))
        if expected == 401:
            assert response.headers.get("WWW-Authenticate") == "Bearer"
    elif case.check is not None:
        case.check(response.json(), role, world)
