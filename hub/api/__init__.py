"""The hub's REST API: FastAPI under ``/api/v1``, plus ``/health`` and ``/metrics``.

:func:`create_app` builds the app on a database engine; :class:`ApiServer`
serves it with uvicorn as a ``segs hub run`` component. The OpenAPI document
(``/openapi.json``, browsable at ``/docs``) lists every endpoint with its
response model and its error responses, all in one shape
(:mod:`segs.hub.api.errors`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, Final

import uvicorn
from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from sqlalchemy import Engine

from segs.hub.accounts import Accounts
from segs.hub.api.deps import ApiContext, LoginThrottle
from segs.hub.api.errors import ErrorBody, install_error_handlers
from segs.hub.api.metrics import ApiMetrics, MetricsMiddleware
from segs.hub.api.routes import auth, service, telemetry, users
from segs.hub.db.engine import make_engine
from segs.hub.db.types import utc_now
from segs.hub.exceptions import HubError
from segs.hub.security import TokenService
from segs.hub.settings import HubSettings

__all__ = ["API_PREFIX", "ApiServer", "create_app"]

API_PREFIX: Final = "/api/v1"
API_POOL_SIZE: Final = 24
"""Database connections an API process keeps open."""

_log = logging.getLogger(__name__)


def create_app(
    settings: HubSettings,
    *,
    engine: Engine | None = None,
    clock: Callable[[], datetime] = utc_now,
    ingest_stats: Callable[[], dict[str, float]] | None = None,
) -> FastAPI:
    """The API app on ``engine`` (default: one on ``settings.database_url``).

    Raises :class:`~segs.hub.exceptions.ConfigError` for settings the API
    refuses (the demo token secret outside demo mode, unreadable key files).
    """
    engine = engine or make_engine(settings.database_url)
    tokens = TokenService(settings, clock=clock)
    context = ApiContext(
        settings=settings,
        engine=engine,
        clock=clock,
        tokens=tokens,
        accounts=Accounts(settings, tokens, clock=clock),
        throttle=LoginThrottle(settings),
        ingest_stats=ingest_stats,
    )
    app = FastAPI(
        title="SEGS hub API",
        version=_version(),
        summary="Smart Energy Grid System: meters, tariffs, alerts and invoices",
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.context = context
    app.state.metrics = ApiMetrics(engine, ingest_stats=ingest_stats)
    install_error_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    api = APIRouter(prefix=API_PREFIX)
    for module in (auth, users, telemetry):
        api.include_router(module.router)
    app.include_router(api)
    app.include_router(service.router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version("segs")
    except PackageNotFoundError:
        return "0"


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with every validation error in the API's own error shape."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        routes=app.routes,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    if "ErrorBody" not in components:
        body = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        components["ErrorBody"] = body
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            if "requestBody" in operation and "400" not in responses:
                # A body that is not even text (invalid UTF-8) fails before validation.
                responses["400"] = {
                    "description": "the body cannot be parsed",
                    "content": {"application/json": {"schema": error_ref}},
                }
            if "422" in responses:
                responses["422"] = {
                    "description": "the request is not valid",
                    "content": {"application/json": {"schema": error_ref}},
                }
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    app.openapi_schema = schema
    return schema


class _Server(uvicorn.Server):
    # segs hub run owns the signals; uvicorn must not install its own handlers.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ApiServer:
    """Serves the API with uvicorn until cancelled (a ``segs hub run`` component)."""

    def __init__(
        self,
        settings: HubSettings,
        *,
        clock: Callable[[], datetime] = utc_now,
        ingest_stats: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        self.settings = settings
        # Sync routes run in a thread pool; a connection pool smaller than the requests
        # in flight would open and close a PostgreSQL session per request beyond it.
        self.engine = make_engine(settings.database_url, pool_size=API_POOL_SIZE, max_overflow=8)
        self.app = create_app(settings, engine=self.engine, clock=clock, ingest_stats=ingest_stats)
        config = uvicorn.Config(
            self.app,
            host=settings.api_host,
            port=settings.api_port,
            log_config=None,
            access_log=False,
            lifespan="off",
            proxy_headers=True,
        )
        self.server = _Server(config)
        self.port: int | None = None
        """The port it listens on once running (useful with ``api_port = 0``)."""

    async def run(self) -> None:
        """Serve until cancelled, then close connections and the database pool.

        Raises :class:`~segs.hub.exceptions.HubError` when the address cannot be bound.
        """
        host, port = self.settings.api_host, self.settings.api_port
        try:
            sock = socket.create_server((host, port), family=_family(host), reuse_port=False)
        except OSError as exc:
            self.engine.dispose()
            raise HubError(f"the API cannot listen on {host}:{port}: {exc.strerror}") from exc
        # socket.create_server leaves the protocol 0, so asyncio does not set
        # TCP_NODELAY on accepted connections; Linux copies it from the listening
        # socket. Without it a small answer waits out the client's delayed ACK (40 ms).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.set_inheritable(True)
        self.port = int(sock.getsockname()[1])
        _log.info("API listening on http://%s:%d (docs at /docs)", host, self.port)
        task = asyncio.create_task(self.server.serve(sockets=[sock]))
        try:
            await asyncio.shield(task)
        finally:
            self.server.should_exit = True
            with contextlib.suppress(Exception):
                await task
            sock.close()
            self.engine.dispose()
            _log.info("API stopped")


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
