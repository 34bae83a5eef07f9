"""Prometheus metrics of an API app: request latency by route, ingest counters, dead letters.

Each app has a registry of its own (several apps can live in one test
process). Latency is labelled by the route's path template
(``/api/v1/telemetry/operator/meters/{meter_id}/history``), never by the raw
path, so label cardinality stays bounded; requests no route matched share
the label ``unmatched``. Templates come from the app's OpenAPI paths, matched
against the request path (FastAPI does not expose the full template of a route
included through nested routers).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import col
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from segs.hub.db import DeadLetter

__all__ = ["ApiMetrics", "MetricsMiddleware"]

_PARAMETER: Final = re.compile(r"\{[^/{}]+\}")

_LATENCY_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class _HubCollector(Collector):
    """Counters read at scrape time: ingest's (same process) and dead letters by reason."""

    def __init__(
        self,
        engine: Engine,
        ingest_stats: Callable[[], dict[str, float]] | None,
    ) -> None:
        self._engine = engine
        self._ingest_stats = ingest_stats

    def collect(self) -> Iterator[Metric]:
        if self._ingest_stats is not None:
            for name, value in sorted(self._ingest_stats().items()):
                if name.endswith("_s"):
                    yield GaugeMetricFamily(f"segs_ingest_{name}econds", f"ingest {name}", value)
                else:
                    yield CounterMetricFamily(f"segs_ingest_{name}", f"ingest {name}", value)
        letters = GaugeMetricFamily(
            "segs_dead_letters", "messages the hub refused, by reason", labels=["reason"]
        )
        try:
            with self._engine.connect() as connection:
                rows = connection.execute(
                    select(col(DeadLetter.reason), func.count()).group_by(col(DeadLetter.reason))
                ).all()
        except SQLAlchemyError:
            rows = []
        for reason, count in rows:
            letters.add_metric([str(reason)], float(count))
        yield letters


class ApiMetrics:
    """The app's registry and the metrics the middleware records."""

    def __init__(
        self,
        engine: Engine,
        *,
        ingest_stats: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "segs_http_request_duration_seconds",
            "HTTP request latency by method, route template and status",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_HubCollector(engine, ingest_stats))


class _Templates:
    """Request path → route template, from the OpenAPI paths of the app."""

    def __init__(self, paths: Iterable[str]) -> None:
        # Fewer parameters first: a literal segment wins over a parameter.
        ordered = sorted(paths, key=lambda path: (path.count("{"), path))
        self._patterns = [
            (re.compile("^" + "[^/]+".join(map(re.escape, _PARAMETER.split(path))) + "$"), path)
            for path in ordered
        ]

    def match(self, path: str) -> str:
        for pattern, template in self._patterns:
            if pattern.match(path):
                return template
        return "unmatched"


class MetricsMiddleware:
    """Pure ASGI middleware timing every HTTP request into :attr:`ApiMetrics.latency`."""

    def __init__(self, app: ASGIApp, *, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._templates: _Templates | None = None

    def _template(self, scope: Scope) -> str:
        if self._templates is None:
            app = scope.get("app")
            openapi = getattr(app, "openapi", None)
            if openapi is None:
                return "unmatched"
            self._templates = _Templates(openapi().get("paths", {}))
        return self._templates.match(scope.get("path", ""))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            template = self._template(scope)
            self.metrics.latency.labels(scope.get("method", ""), template, str(status)).observe(
                time.perf_counter() - started
            )
