"""``/api/v1/telemetry``: the signed-in user's meter data and the operators' regional views.

``my/...`` reads the meter linked to the signed-in account (404 when none is).
``operator/...`` is for operators, scoped to their region, and admins: a meter
outside an operator's region answers 404 (as if it did not exist), a region
outside it 403. Query times are ISO 8601 with an offset (``2026-03-02T10:00:00Z``);
``from`` defaults to a day (a week for breakdowns) before ``to``, ``to`` to now.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Final, TypeVar

from fastapi import APIRouter, Path, Query

from segs.hub import telemetry
from segs.hub.api.deps import ContextDep, Credentials, OperatorUser, SessionDep, for_customer
from segs.hub.api.errors import ApiError, error_responses
from segs.hub.db import Role, User
from segs.hub.telemetry import (
    Breakdown,
    BreakdownBy,
    Comparison,
    Consumer,
    History,
    MeterStatusRow,
    Period,
    RegionStats,
    RegionSummary,
    Resolution,
    Stats,
    WindowPoint,
)
from segs.protocol.ids import ID_PATTERN

__all__ = ["router"]

router = APIRouter(prefix="/telemetry", tags=["telemetry"])

_T = TypeVar("_T")
_DAY: Final = timedelta(days=1)
_WEEK: Final = timedelta(days=7)

From = Annotated[
    datetime | None,
    Query(alias="from", description="range start, ISO 8601 with offset (default: to - 1 day)"),
]
To = Annotated[
    datetime | None, Query(alias="to", description="range end, exclusive (default: now)")
]
_ID: Final = f"^{ID_PATTERN.pattern}$"
MeterIdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=_ID)]
RegionPath = Annotated[str, Path(min_length=1, max_length=64, pattern=_ID)]
RegionQuery = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=64,
        pattern=_ID,
        description="default: the operator's region; admins: all",
    ),
]
_EARLIEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST: Final = datetime(2200, 1, 1, tzinfo=UTC)


def _query(call: Callable[[], _T]) -> _T:
    """Run a telemetry query; its ``ValueError`` (bad range or choice) answers 422."""
    try:
        return call()
    except ValueError as exc:
        raise ApiError(422, str(exc), code="invalid_query") from None


def _range(
    context: ContextDep, start: datetime | None, end: datetime | None, span: timedelta = _DAY
) -> tuple[datetime, datetime]:
    """``[from, to)`` with the defaults; 422 for naive times or times outside 1970 to 2200."""
    for name, value in (("from", start), ("to", end)):
        if value is None:
            continue
        if value.tzinfo is None or value.utcoffset() is None:
            raise ApiError(422, f"{name}: give a time zone offset, e.g. ...Z", code="invalid_query")
        if not _EARLIEST <= value <= _LATEST:
            raise ApiError(422, f"{name}: must lie between 1970 and 2200", code="invalid_query")
    end = end or context.clock()
    return (start or end - span), end


# -- the signed-in user's meter --------------------------------------------------------------

_MY_ERRORS: Final = error_responses(401, 404, 422)


@router.get("/my/latest", responses=_MY_ERRORS, summary="My meter's newest window")
async def my_latest(context: ContextDep, credentials: Credentials) -> WindowPoint:
    """The newest minute window of my meter (404 when it has sent none yet)."""
    window = await for_customer(
        context,
        credentials,
        lambda connection, meter_id, _zone: telemetry.latest_window(connection, meter_id),
    )
    if window is None:
        raise ApiError(404, "your meter has not reported yet")
    return window


@router.get("/my/history", responses=_MY_ERRORS, summary="My meter's history")
async def my_history(
    *,
    context: ContextDep,
    credentials: Credentials,
    start: From = None,
    end: To = None,
    resolution: Annotated[
        Resolution | None,
        Query(description="1m, 15m or 1d; default: the finest within the point limit"),
    ] = None,
) -> History:
    """Energy and power per minute, quarter hour or day over ``[from, to)``, at most
    1,500 points (a finer resolution than that allows answers 422)."""
    first, last = _range(context, start, end)
    return await for_customer(
        context,
        credentials,
        lambda connection, meter_id, _zone: _query(
            lambda: telemetry.history(connection, meter_id, first, last, resolution)
        ),
    )


@router.get("/my/stats", responses=_MY_ERRORS, summary="My meter's statistics")
async def my_stats(
    context: ContextDep, credentials: Credentials, start: From = None, end: To = None
) -> Stats:
    """Energy, min/avg/max power and the peak time over ``[from, to)``."""
    first, last = _range(context, start, end)
    return await for_customer(
        context,
        credentials,
        lambda connection, meter_id, _zone: _query(
            lambda: telemetry.stats(connection, meter_id, first, last)
        ),
    )


@router.get("/my/breakdown", responses=_MY_ERRORS, summary="My consumption broken down")
async def my_breakdown(
    *,
    context: ContextDep,
    credentials: Credentials,
    start: From = None,
    end: To = None,
    by: Annotated[BreakdownBy, Query(description="hour of day, weekday or day")] = "hour",
) -> Breakdown:
    """Energy and average power by local hour of day, weekday or date (the region's
    time zone) over ``[from, to)`` (default: the last 7 days)."""
    first, last = _range(context, start, end, _WEEK)
    return await for_customer(
        context,
        credentials,
        lambda connection, meter_id, zone: _query(
            lambda: telemetry.breakdown(connection, meter_id, first, last, by=by, tz=zone)
        ),
    )


@router.get("/my/compare", responses=_MY_ERRORS, summary="This period against the previous one")
async def my_compare(
    context: ContextDep,
    credentials: Credentials,
    period: Annotated[Period, Query(description="local calendar day, week or month")] = "day",
) -> Comparison:
    """This local day, week or month so far against the same stretch of the previous one."""
    now = context.clock()
    return await for_customer(
        context,
        credentials,
        lambda connection, meter_id, zone: _query(
            lambda: telemetry.compare(connection, meter_id, period, now, zone)
        ),
    )


# -- operators and admins --------------------------------------------------------------------

_OPERATOR_ERRORS: Final = error_responses(401, 403, 404, 422)


def _scope(user: User, region: str | None) -> str | None:
    """The region an operator or admin may read: an operator only their own (403 otherwise)."""
    if user.role == Role.ADMIN:
        return region
    if region is not None and region != user.region:
        raise ApiError(403, "operators see their own region only")
    if user.region is None:
        raise ApiError(403, "this operator has no region")
    return user.region


@router.get(
    "/operator/meters/{meter_id}/history",
    responses=_OPERATOR_ERRORS,
    summary="A meter's history (operator's region; admins: any)",
)
def operator_meter_history(
    *,
    meter_id: MeterIdPath,
    user: OperatorUser,
    session: SessionDep,
    context: ContextDep,
    start: From = None,
    end: To = None,
    resolution: Resolution | None = None,
) -> History:
    """The history of any meter in the operator's region (any meter for admins)."""
    connection = session.connection()
    region = telemetry.meter_region(connection, meter_id)
    if region is None or (user.role != Role.ADMIN and region != user.region):
        raise ApiError(404, f"no meter {meter_id}")
    first, last = _range(context, start, end)
    return _query(lambda: telemetry.history(connection, meter_id, first, last, resolution))


@router.get(
    "/operator/regions/{region}/stats",
    responses=_OPERATOR_ERRORS,
    summary="A region's load over time",
)
def operator_region_stats(
    *,
    region: RegionPath,
    user: OperatorUser,
    session: SessionDep,
    context: ContextDep,
    start: From = None,
    end: To = None,
) -> RegionStats:
    """Load timeline, meters reporting and load factor of a region over ``[from, to)``."""
    _scope(user, region)
    first, last = _range(context, start, end)
    result = _query(lambda: telemetry.region_stats(session.connection(), region, first, last))
    if result is None:
        raise ApiError(404, f"no region {region}")
    return result


@router.get(
    "/operator/top-consumers",
    responses=_OPERATOR_ERRORS,
    summary="Meters ranked by energy imported",
)
def operator_top_consumers(
    *,
    user: OperatorUser,
    session: SessionDep,
    context: ContextDep,
    region: RegionQuery = None,
    start: From = None,
    end: To = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 10,
) -> list[Consumer]:
    """The meters that imported the most energy over ``[from, to)``."""
    scoped = _scope(user, region)
    first, last = _range(context, start, end)
    return _query(
        lambda: telemetry.top_consumers(
            session.connection(), first, last, region=scoped, limit=limit
        )
    )


@router.get(
    "/operator/meters/status",
    responses=_OPERATOR_ERRORS,
    summary="Online/offline and last seen per meter",
)
def operator_meter_status(
    user: OperatorUser,
    session: SessionDep,
    context: ContextDep,
    region: RegionQuery = None,
) -> list[MeterStatusRow]:
    """Every meter of the region with its gateway's state and its newest window."""
    scoped = _scope(user, region)
    now = context.clock()
    return _query(lambda: telemetry.meter_status(session.connection(), now, region=scoped))


@router.get(
    "/operator/regions/summary",
    responses=_OPERATOR_ERRORS,
    summary="Every region side by side",
)
def operator_regions_summary(
    user: OperatorUser, session: SessionDep, context: ContextDep
) -> list[RegionSummary]:
    """Capacity, meters reporting, current load and today's energy per region (an
    operator sees their own region's row)."""
    rows = telemetry.regions_summary(session.connection(), context.clock())
    if user.role == Role.ADMIN:
        return rows
    return [row for row in rows if row.region == user.region]
