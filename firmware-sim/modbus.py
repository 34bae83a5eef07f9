"""Modbus TCP and RTU servers: one server per bus, answering every unit id on it.

pymodbus does the framing (MBAP for TCP, RTU with CRC on a serial line); the
answer to each request comes from :class:`BusRouter`, which reads the meter's
register image and applies its wire faults:

========================  ==================================================================
request                   answer
========================  ==================================================================
unit id not on the bus    TCP: exception 0x0B (gateway target failed to respond), as an
                          RS-485 gateway does; RTU: silence, as on a real line
fault ``offline``         silence (the master times out)
fault ``slow``            the normal answer, ``delay_ms`` late
fault ``exception``       that exception code
not FC03/FC04             exception 01 (illegal function)
more than ``max_block``   exception 03 (illegal data value): Eastron meters refuse reads
                          over 80 registers
outside the profile's     exception 02 (illegal data address)
served address ranges
fault ``garbage``         NaN / "not implemented" values, or random words
otherwise                 the registers
========================  ==================================================================

The request handling replaces pymodbus's datastore path rather than extending
it: pymodbus answers from a single ``last_pdu`` per connection, which a delayed
(``slow``) answer would race with, and its datastores are deprecated shims. Each
request here is answered by its own task holding its own request.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Self

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse, ReadInputRegistersResponse
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import SimData, SimDevice

from segs.sim.config import BusConfig
from segs.sim.exceptions import StartupError
from segs.sim.faults import FaultTable
from segs.sim.registers import ProfileImage

__all__ = ["BusRouter", "BusServer", "BusStats", "UnitTarget"]

_log = logging.getLogger(__name__)

_READ_CODES: Final = frozenset({3, 4})


@dataclass(frozen=True)
class UnitTarget:
    """Where a unit id's answers come from."""

    image: ProfileImage
    row: int
    """The meter's row in ``image``."""
    meter: int
    """The meter's fleet index (for its faults)."""


@dataclass
class BusStats:
    """Request counters of one bus."""

    requests: int = 0
    answered: int = 0
    exceptions: int = 0
    silent: int = 0
    errors: int = 0
    """Requests that failed inside the simulator (answered with exception 04)."""


@dataclass
class BusRouter:
    """Answers the requests of one bus from the register images and the fault table."""

    bus: BusConfig
    units: Mapping[int, UnitTarget]
    faults: FaultTable
    rng: random.Random
    stats: BusStats = field(default_factory=BusStats)

    async def answer(self, request: ModbusPDU) -> ModbusPDU | None:
        """Return the answer to ``request``, or ``None`` to stay silent."""
        self.stats.requests += 1
        target = self.units.get(request.dev_id)
        if target is None:
            if self.bus.transport == "rtu":
                self.stats.silent += 1
                return None
            return self._exception(request, ExcCodes.GATEWAY_NO_RESPONSE)
        wire = self.faults.wire(target.meter)
        if wire is not None:
            if wire.offline:
                self.stats.silent += 1
                return None
            if wire.delay:
                await asyncio.sleep(wire.delay)
            if wire.exception is not None:
                return self._exception(request, wire.exception)
        code = request.function_code
        if code not in _READ_CODES:
            return self._exception(request, ExcCodes.ILLEGAL_FUNCTION)
        image = target.image
        address, count = request.address, request.count
        if not 1 <= count <= image.profile.max_block:
            return self._exception(request, ExcCodes.ILLEGAL_VALUE)
        if image.span_of(code, address, count) is None:
            return self._exception(request, ExcCodes.ILLEGAL_ADDRESS)
        if wire is not None and wire.garbage == "random":
            registers = [self.rng.getrandbits(16) for _ in range(count)]
        else:
            missing = wire is not None and wire.garbage == "nan"
            registers = image.words(target.row, code, address, count, missing=missing)
        self.stats.answered += 1
        response = ReadHoldingRegistersResponse if code == 3 else ReadInputRegistersResponse
        return response(
            registers=registers, dev_id=request.dev_id, transaction_id=request.transaction_id
        )

    def _exception(self, request: ModbusPDU, code: int) -> ExceptionResponse:
        self.stats.exceptions += 1
        return ExceptionResponse(
            request.function_code,
            code,
            device_id=request.dev_id,
            transaction=request.transaction_id,
        )


class _RequestHandler(ServerRequestHandler):
    """One connection (or the serial line): frames requests, answers each from the router."""

    def __init__(self, owner: _TcpServer | _SerialServer, router: BusRouter) -> None:
        super().__init__(owner, None, None, None)  # type: ignore[no-untyped-call]
        self._router = router
        self._pending: set[asyncio.Task[None]] = set()

    def callback_data(self, data: bytes, addr: tuple[str, int] | None = None) -> int:
        """Frame every complete request in ``data``; answer each in its own task."""
        used = 0
        while used < len(data):
            try:
                length, request = self.framer.handleFrame(data[used:], 0, 0)
            except ModbusIOException as exc:
                # A function code pymodbus cannot decode: not one a meter supports.
                if self._router.bus.transport == "tcp":
                    response = ExceptionResponse(
                        exc.fcode or 0,
                        ExcCodes.ILLEGAL_FUNCTION,
                        device_id=exc.dev_id,
                        transaction=exc.transaction_id,
                    )
                    self.pdu_send(response, addr)
                return len(data)
            if not length:
                break
            used += length
            if request is not None:
                task = self.loop.create_task(self._handle(request, addr))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
        return used

    async def _handle(self, request: ModbusPDU, addr: tuple[str, int] | None) -> None:
        try:
            response = await self._router.answer(request)
        except Exception:  # noqa: BLE001 - a task's top level: log, count, answer 04
            _log.exception("bus %s: answering %s failed", self._router.bus.id, request)
            self._router.stats.errors += 1
            response = ExceptionResponse(request.function_code, ExcCodes.DEVICE_FAILURE)
        if response is None or not self.transport:
            return
        response.transaction_id = request.transaction_id
        response.dev_id = request.dev_id
        self.pdu_send(response, addr)

    def callback_disconnected(self, exc: Exception | None) -> None:
        """Drop answers still being prepared (a slow meter) for a connection that is gone."""
        for task in self._pending:
            task.cancel()
        super().callback_disconnected(exc)


def _placeholder() -> list[SimDevice]:
    # pymodbus servers insist on a datastore; requests never reach it (see _RequestHandler).
    return [SimDevice(id=0, simdata=[SimData(0)])]


class _TcpServer(ModbusTcpServer):
    def __init__(self, router: BusRouter, *, address: tuple[str, int]) -> None:
        super().__init__(_placeholder(), address=address)
        self.router = router

    def callback_new_connection(self) -> _RequestHandler:
        return _RequestHandler(self, self.router)


class _SerialServer(ModbusSerialServer):
    def __init__(self, router: BusRouter, *, bus: BusConfig) -> None:
        super().__init__(
            _placeholder(),
            port=bus.device or "",
            baudrate=bus.baudrate,
            parity=bus.parity,
            stopbits=bus.stopbits,
            bytesize=bus.bytesize,
        )
        self.router = router

    def callback_new_connection(self) -> _RequestHandler:
        return _RequestHandler(self, self.router)


class BusServer:
    """A bus on the wire: listens on enter, stops on exit."""

    def __init__(self, router: BusRouter) -> None:
        self.router = router
        self.bus = router.bus
        self._server: _TcpServer | _SerialServer | None = None
        self.port: int | None = None
        """TCP: the port actually bound (useful when the config says 0)."""

    async def __aenter__(self) -> Self:
        bus = self.bus
        server: _TcpServer | _SerialServer
        if bus.transport == "tcp":
            server = _TcpServer(self.router, address=(bus.host, bus.port))
            where = f"{bus.host}:{bus.port}"
        else:
            server = _SerialServer(self.router, bus=bus)
            where = f"serial device {bus.device}"
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            await server.shutdown()  # type: ignore[no-untyped-call]
            raise StartupError(f"bus {bus.id!r}: cannot listen on {where}") from exc
        self._server = server
        if bus.transport == "tcp":
            sockets = getattr(server.transport, "sockets", None) or ()
            self.port = sockets[0].getsockname()[1] if sockets else bus.port
        _log.info("bus %s: %d meters on %s", bus.id, len(self.router.units), self.endpoint)
        return self

    @property
    def endpoint(self) -> str:
        """Where the bus answers: ``host:port`` or the serial device."""
        if self.bus.transport == "tcp":
            return f"{self.bus.host}:{self.port if self.port is not None else self.bus.port}"
        return self.bus.device or ""

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None
