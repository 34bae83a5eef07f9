"""``/health`` and ``/metrics``: what monitoring and load balancers ask."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Final, Literal

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import func, select, text, type_coerce
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import col
from starlette.concurrency import run_in_threadpool

from segs.hub.api.deps import ContextDep
from segs.hub.api.metrics import ApiMetrics
from segs.hub.db import Region, RegionalLoad
from segs.hub.db.types import UtcDateTime

__all__ = ["router"]

router = APIRouter(tags=["service"])

_BROKER_TIMEOUT_S: Final = 2.0
_DATABASE_TIMEOUT_S: Final = 5.0


class Check(BaseModel):
    """One dependency's state."""

    ok: bool
    latency_ms: float | None = None
    error: str | None = None


class Health(BaseModel):
    """The hub's health: ``ok`` when the database and the broker answer."""

    status: Literal["ok", "degraded", "down"] = Field(
        description="ok; degraded (broker unreachable); down (database unreachable, HTTP 503)"
    )
    database: Check
    broker: Check
    ingest_lag_s: float | None = Field(
        description="seconds since the end of the newest minute of stored load (None: no data)"
    )
    mode: str
    hub_id: str


def _database(context: ContextDep) -> tuple[Check, float | None]:
    started = time.perf_counter()
    try:
        with context.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            # One index probe per region (newest minute), not a scan of the whole table.
            newest_per_region = (
                select(type_coerce(func.max(RegionalLoad.minute), UtcDateTime()))
                .where(col(RegionalLoad.region) == col(Region.name))
                .correlate(Region)
                .scalar_subquery()
            )
            minutes = (
                connection.execute(select(newest_per_region).select_from(Region)).scalars().all()
            )
            newest = max((minute for minute in minutes if minute is not None), default=None)
    except SQLAlchemyError as exc:
        return Check(ok=False, error=type(exc).__name__), None
    latency = (time.perf_counter() - started) * 1000
    lag = None
    if newest is not None:
        lag = max(0.0, (context.clock() - newest).total_seconds() - 60.0)
    return Check(ok=True, latency_ms=round(latency, 2)), lag


async def _database_within(context: ContextDep) -> tuple[Check, float | None]:
    try:
        return await asyncio.wait_for(run_in_threadpool(_database, context), _DATABASE_TIMEOUT_S)
    except TimeoutError:
        return Check(ok=False, error=f"no answer within {_DATABASE_TIMEOUT_S:g} s"), None


async def _broker(context: ContextDep) -> Check:
    settings = context.settings
    started = time.perf_counter()
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(settings.mqtt_host, settings.mqtt_port), _BROKER_TIMEOUT_S
        )
    except (OSError, TimeoutError) as exc:
        return Check(ok=False, error=type(exc).__name__)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return Check(ok=True, latency_ms=round((time.perf_counter() - started) * 1000, 2))


@router.get(
    "/health",
    responses={503: {"model": Health, "description": "the database is unreachable"}},
    summary="Database and broker reachability, ingest lag",
)
async def health(context: ContextDep, response: Response) -> Health:
    """200 while the database answers (``degraded`` when the broker does not), else 503."""
    (database, lag), broker = await asyncio.gather(_database_within(context), _broker(context))
    state: Literal["ok", "degraded", "down"] = "ok"
    if not database.ok:
        state = "down"
        response.status_code = 503
    elif not broker.ok:
        state = "degraded"
    return Health(
        status=state,
        database=database,
        broker=broker,
        ingest_lag_s=None if lag is None else round(lag, 1),
        mode=context.settings.mode,
        hub_id=context.settings.hub_id,
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
    summary="Prometheus metrics",
)
async def metrics(request: Request) -> Response:
    """Request latency by route, ingest counters and dead letters, in Prometheus' text format."""
    registry = request.app.state.metrics
    if not isinstance(registry, ApiMetrics):
        raise TypeError("the app has no ApiMetrics; build it with create_app()")
    body = await run_in_threadpool(generate_latest, registry.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
