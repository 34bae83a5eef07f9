"""The control API (FastAPI): the true state of every meter, fault injection, statistics.

===========================================  ==============================================
``GET /health``                              ``{"status": "ok"}``
``GET /meters``                              every meter's true state
``GET /meters/{meter_id}``                   one meter's true state
``GET /meters/{meter_id}/faults``            its active faults
``POST /meters/{meter_id}/faults``           inject a fault (JSON, ``kind`` + parameters)
``DELETE /meters/{meter_id}/faults``         clear every fault of the meter
``DELETE /meters/{meter_id}/faults/{kind}``  clear one kind
``GET /stats``                               update loop timing, request counters per bus
===========================================  ==============================================

Errors are JSON ``{"error": code, "message": text}``: 404 ``not_found`` (unknown
meter or path), 405 ``method_not_allowed``, 422 ``invalid_request`` (a bad fault).
The truth is the very numbers the register images were built from at that
update (``step`` says which).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Annotated, Any, Self

import uvicorn
from fastapi import APIRouter, Body, FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from segs import __version__
from segs.sim.exceptions import StartupError, UnknownMeterError
from segs.sim.faults import ActiveFault, Fault, FaultKind

if TYPE_CHECKING:
    from collections.abc import Generator

    from segs.sim.app import Simulator

__all__ = ["ControlServer", "create_app", "fault_json"]

_log = logging.getLogger(__name__)

_ERROR_CODES = {404: "not_found", 405: "method_not_allowed", 422: "invalid_request"}


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def fault_json(active: ActiveFault) -> dict[str, Any]:
    """A fault as the API shows it: its parameters, ``since`` and ``until`` (UTC, ISO 8601)."""
    return {
        **active.fault.model_dump(),
        "since": _iso(active.since),
        "until": _iso(active.until),
    }


def _error(status_code: int, message: str, code: str | None = None) -> JSONResponse:
    return JSONResponse(
        status_code=status_code,
        content={"error": code or _ERROR_CODES.get(status_code, "error"), "message": message},
    )


def _validation_message(exc: RequestValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()))
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(problems) or "invalid request"


def create_app(sim: Simulator) -> FastAPI:
    """Build the control API of ``sim``."""
    app = FastAPI(
        title="SEGS meter simulator",
        version=__version__,
        description="The true state of the simulated meters, and fault injection.",
    )

    async def unknown_meter(_request: Request, exc: Exception) -> JSONResponse:
        return _error(status.HTTP_404_NOT_FOUND, str(exc))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)  # noqa: S101 - registered for it alone
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == status.HTTP_404_NOT_FOUND and message == "Not Found":
            message = f"no such path: {request.method} {request.url.path}"
        return _error(exc.status_code, message)

    async def invalid_request(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)  # noqa: S101 - registered for it alone
        return _error(status.HTTP_422_UNPROCESSABLE_CONTENT, _validation_message(exc))

    app.add_exception_handler(UnknownMeterError, unknown_meter)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.include_router(_meters_router(sim))
    app.include_router(_service_router(sim))
    return app


def _meters_router(sim: Simulator) -> APIRouter:
    router = APIRouter(prefix="/meters", tags=["meters"])

    @router.get("")
    async def list_meters() -> list[dict[str, Any]]:
        """The true state of every meter."""
        return sim.meter_states()

    @router.get("/{meter_id}")
    async def get_meter(meter_id: str) -> dict[str, Any]:
        """The true state of one meter: values by register name, active faults."""
        return sim.meter_state(meter_id)

    @router.get("/{meter_id}/faults")
    async def list_faults(meter_id: str) -> list[dict[str, Any]]:
        """The faults active on the meter."""
        return [fault_json(active) for active in sim.faults_of(meter_id)]

    @router.post("/{meter_id}/faults", status_code=status.HTTP_201_CREATED)
    async def add_fault(meter_id: str, fault: Annotated[Fault, Body()]) -> dict[str, Any]:
        """Inject a fault; one of each kind is active at a time (a new one replaces it)."""
        return fault_json(sim.inject(meter_id, fault))

    @router.delete("/{meter_id}/faults")
    async def clear_faults(meter_id: str) -> dict[str, Any]:
        """Clear every fault of the meter."""
        return {"cleared": [fault_json(active) for active in sim.clear(meter_id)]}

    @router.delete("/{meter_id}/faults/{kind}")
    async def clear_fault(meter_id: str, kind: FaultKind) -> dict[str, Any]:
        """Clear the meter's fault of one kind."""
        return {"cleared": [fault_json(active) for active in sim.clear(meter_id, kind)]}

    return router


def _service_router(sim: Simulator) -> APIRouter:
    router = APIRouter(tags=["service"])

    @router.get("/health")
    async def health() -> dict[str, str]:
        """Liveness."""
        return {"status": "ok"}

    @router.get("/stats")
    async def stats() -> dict[str, Any]:
        """Update loop timing and per-bus request counters."""
        return sim.stats()

    return router


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the simulator owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class ControlServer:
    """The control API on a TCP port: bind on enter; :meth:`serve` runs it as a task."""

    def __init__(self, app: FastAPI, *, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._socket: socket.socket | None = None
        self._server: _Server | None = None

    async def __aenter__(self) -> Self:
        try:
            sock = socket.create_server((self.host, self.port), reuse_port=False)
        except OSError as exc:
            raise StartupError(
                f"control API: cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from None
        sock.setblocking(False)
        self._socket = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, lifespan="off", log_config=None
        )
        self._server = _Server(config)
        return self

    async def serve(self) -> None:
        """Answer HTTP requests until :meth:`stop`."""
        if self._server is None or self._socket is None:
            raise RuntimeError("enter the ControlServer before serving")
        await self._server.serve(sockets=[self._socket])

    def stop(self) -> None:
        """Ask :meth:`serve` to return (it finishes open requests first)."""
        if self._server is not None:
            self._server.should_exit = True

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
        if self._socket is not None:
            self._socket.close()
            self._socket = None
