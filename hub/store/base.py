"""The storage interface both backends implement, and the logic they share.

A :class:`Store` owns one database connection and is used from one thread at a
time (ingest runs it in a single worker thread: one writer). :meth:`Store.commit`
takes decoded messages and dead letters and handles them in ONE transaction:

1. births and states update the registry (demo mode registers unknown gateways
   and regions; production mode dead-letters them);
2. window and event batches are checked: the gateway must be registered
   (``unknown_gateway``), nothing may be further in the future than the
   tolerance (``future_window``), and every meter must belong to the sending
   gateway (``spoofed_meter``; unknown meters are registered to it). A batch
   failing a check is refused whole and dead-lettered;
3. windows are inserted, deduplicated on ``(meter_id, window_start)``, and the
   rollups and regional load are updated from the NEW windows only — the
   dialect-specific hot path (:meth:`Store._store_windows`);
4. gaps are recorded, late windows shrink the gaps they fall in, counter
   breaks between consecutive windows are flagged; events are inserted
   (deduplicated on ``(meter_id, kind, at)``); each gateway's highest
   committed seq advances; dead letters are written.

Only after the transaction commits does the caller learn, in
:class:`~segs.hub.store.types.CommitResult`, which seqs it may acknowledge.

Concurrency: every commit first locks the rows of the gateways it touches, in
id order. A meter belongs to one gateway, so two workers never interleave
writes for the same meter, and gap and continuity checks see everything
committed before them.

Steady state: a store remembers each meter's latest window (its *tail*) from
its own commits. While a gateway's ``ingest_version`` (bumped by every commit of
its batches, under the row lock) is the one this store wrote last, no other
worker has written that gateway's meters since, so windows after the cached
tail are known to be new and are checked for gaps and continuity in Python;
only the others (first sight of a meter, late windows, another worker's
meters) take the SQL path that reads the meter's latest window. The insert
verifies it: if a window thought new turns out known, the transaction is
rolled back and redone without the cache.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Final, NamedTuple, TypeVar

from sqlalchemy import Connection, Engine, Table, bindparam, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from segs.hub.db import (
    DeadLetter,
    Gateway,
    Meter,
    MeterEvent,
    MeterGap,
    MeterWindow,
    Region,
    metadata,
)
from segs.hub.db.types import utc_now
from segs.hub.exceptions import StoreError, StoreUnavailableError
from segs.hub.settings import HubSettings, Mode
from segs.hub.store.types import (
    Clock,
    CommitResult,
    DeadLetterRecord,
    HubReason,
    Incoming,
)
from segs.protocol import (
    ConnectionState,
    EventBatch,
    GatewayBirth,
    GatewayState,
    OutboxStats,
    Window,
    WindowBatch,
    limits,
)

__all__ = [
    "COUNTER_BREAK_EVENT",
    "Break",
    "LateWindow",
    "Neighbours",
    "Store",
    "StoreOptions",
    "Tail",
    "WindowsOutcome",
]

COUNTER_BREAK_EVENT: Final = "counter_break"
"""Kind of the hub's own meter event for a counter discontinuity (``source = 'hub'``)."""

REL_COUNTER_TOLERANCE: Final = 1e-9
"""Counter mismatch allowed relative to the counter (float rounding of large counters)."""

MAX_CACHED_TAILS: Final = 2_000_000
"""Meters whose latest window a store remembers; beyond, it starts over (a few hundred MB)."""

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

_gw = metadata.tables[Gateway.__tablename__]
_meters = metadata.tables[Meter.__tablename__]
_regions = metadata.tables[Region.__tablename__]
_windows = metadata.tables[MeterWindow.__tablename__]
_events = metadata.tables[MeterEvent.__tablename__]
_gaps = metadata.tables[MeterGap.__tablename__]
_dead = metadata.tables[DeadLetter.__tablename__]


@dataclass(frozen=True)
class StoreOptions:
    """How a store judges what it is given (the store-relevant part of the settings)."""

    mode: Mode = "demo"
    hub_id: str = "hub-1"
    future_tolerance_s: float = 300.0
    counter_tolerance_kwh: float = 0.001
    registry_cache_s: float = 60.0
    demo_region: str = "unassigned"
    demo_region_timezone: str = "UTC"
    demo_region_capacity_kw: float = 1000.0
    demo_region_currency: str = "EUR"

    @classmethod
    def from_settings(cls, settings: HubSettings) -> StoreOptions:
        """The options ``settings`` prescribe."""
        return cls(
            mode=settings.mode,
            hub_id=settings.hub_id,
            future_tolerance_s=settings.future_tolerance_s,
            counter_tolerance_kwh=settings.counter_tolerance_kwh,
            registry_cache_s=settings.registry_cache_s,
            demo_region=settings.demo_region,
            demo_region_timezone=settings.demo_region_timezone,
            demo_region_capacity_kw=settings.demo_region_capacity_kw,
            demo_region_currency=settings.demo_region_currency,
        )


@dataclass(frozen=True, slots=True)
class Break:
    """Counters of a window that do not continue those of the window just before it."""

    meter_id: str
    window_start: datetime
    previous_import_kwh: float
    start_import_kwh: float
    previous_export_kwh: float
    start_export_kwh: float


@dataclass(frozen=True, slots=True)
class LateWindow:
    """A new window that starts before its meter's latest stored window ended."""

    meter_id: str
    window_start: datetime
    window_seconds: int
    import_kwh: float
    export_kwh: float
    import_delta_kwh: float
    export_delta_kwh: float

    @property
    def window_end(self) -> datetime:
        """When the window ends."""
        return self.window_start + timedelta(seconds=self.window_seconds)


@dataclass(frozen=True, slots=True)
class Neighbours:
    """The stored windows just before and just after a late window (after the insert)."""

    previous: LateWindow | None
    following: LateWindow | None


class Tail(NamedTuple):
    """A meter's latest stored window: where it ends and the counters there."""

    start: datetime
    end: datetime
    import_kwh: float
    export_kwh: float


@dataclass(slots=True)
class WindowsOutcome:
    """What the hot path reports about the windows it was given."""

    stored: int = 0
    """New windows, known and unknown."""
    known_stored: int = 0
    """New windows among the known ones (all of them, unless the cache was stale)."""
    gaps: list[tuple[str, datetime, datetime]] = field(default_factory=list)
    """``(meter_id, gap_start, gap_end)`` opened by unknown windows after their meter's latest."""
    breaks: list[Break] = field(default_factory=list)
    late: list[LateWindow] = field(default_factory=list)
    tails: dict[str, Tail] = field(default_factory=dict)
    """The latest window, after the insert, of each meter with unknown windows."""


class _StaleCacheError(Exception):
    """A window the tail cache called new was already stored: redo without the cache."""


@dataclass(slots=True)
class _Lock:
    region: str
    highest_seq: int
    version: int


@dataclass(slots=True)
class _Work:
    """One commit's state while it runs."""

    now: datetime
    result: CommitResult
    letters: list[DeadLetterRecord]
    owners: dict[str, tuple[str, str]] = field(default_factory=dict)
    cache_updates: dict[str, tuple[str, str]] = field(default_factory=dict)
    use_tails: bool = True
    tail_updates: dict[str, Tail] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)


class Store(ABC):
    """The hub's storage; see the module docstring. Not thread-safe: one thread at a time."""

    dialect: ClassVar[str]

    def __init__(
        self,
        engine: Engine,
        *,
        options: StoreOptions | None = None,
        clock: Clock = utc_now,
    ) -> None:
        """Use ``engine`` (the store disposes of it on :meth:`close`)."""
        if engine.dialect.name != self.dialect:
            raise ValueError(f"{type(self).__name__} needs a {self.dialect} engine")
        self._engine = engine
        self._options = options or StoreOptions()
        self._clock = clock
        self._connection: Connection | None = None
        self._owner_cache: dict[str, tuple[str, str, float]] = {}
        self._tails: dict[str, Tail] = {}
        self._tail_gateways: dict[str, set[str]] = {}
        self._versions: dict[str, int] = {}

    @property
    def options(self) -> StoreOptions:
        """The options the store judges with."""
        return self._options

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for readers and tests)."""
        return self._engine

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection and dispose of the engine. Idempotent."""
        if self._connection is not None:
            try:
                self._connection.close()
            except SQLAlchemyError as exc:  # closing a broken connection may fail; it is gone
                _log.debug("closing the store's connection: %s", exc)
            self._connection = None
        self._engine.dispose()

    def __enter__(self) -> Store:
        """Return the store itself."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the store."""
        self.close()

    def ping(self) -> None:
        """Check the database answers; raise :class:`StoreUnavailableError` if not."""
        self._transaction(lambda conn: conn.exec_driver_sql("SELECT 1").close())

    def _connect(self) -> Connection:
        if self._connection is None or self._connection.invalidated or self._connection.closed:
            try:
                connection = self._engine.connect()
            except DBAPIError as exc:
                raise StoreUnavailableError(f"cannot connect to the database: {exc.orig}") from exc
            self._connection = connection
            try:
                with connection.begin():
                    self._setup(connection)
            except DBAPIError as exc:
                raise self._translate(exc) from exc
        return self._connection

    def _transaction(self, work: Callable[[Connection], _T]) -> _T:
        connection = self._connect()
        try:
            with connection.begin():
                return work(connection)
        except DBAPIError as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: DBAPIError) -> StoreError:
        transient = exc.connection_invalidated or self._is_transient(exc)
        if exc.connection_invalidated or self._connection is None or self._connection.invalidated:
            self._drop_connection()
        message = str(exc.orig).strip() or type(exc.orig).__name__
        if transient:
            return StoreUnavailableError(f"database unavailable: {message}")
        return StoreError(f"database refused the operation: {message}")

    def _drop_connection(self) -> None:
        if self._connection is not None:
            try:
                self._connection.invalidate()
                self._connection.close()
            except SQLAlchemyError as exc:
                _log.debug("dropping the store's connection: %s", exc)
            self._connection = None

    # -- backend hooks -------------------------------------------------------------------------

    @abstractmethod
    def _setup(self, connection: Connection) -> None:
        """Prepare a new connection (temporary tables, settings)."""

    @abstractmethod
    def _is_transient(self, exc: DBAPIError) -> bool:
        """Whether retrying later may succeed (lost connection, lock, deadlock, disk full)."""

    @abstractmethod
    def _store_windows(
        self,
        connection: Connection,
        known: Sequence[tuple[Window, str]],
        unknown: Sequence[tuple[Window, str]],
        tolerance: float,
    ) -> WindowsOutcome:
        """Insert ``(window, region)`` pairs, skip stored ones, update rollups and regional load.

        ``known`` windows follow their meter's cached tail and are new (counted
        apart, to verify it); gaps and continuity were checked in Python. For
        ``unknown`` ones the backend reads each meter's latest window before the
        insert, reports gaps and counter breaks of the new windows after it, lists
        the new windows before it (late), and returns each meter's tail after it.
        """

    @abstractmethod
    def _select_owners(
        self, connection: Connection, meter_ids: Sequence[str]
    ) -> dict[str, tuple[str, str]]:
        """``meter_id → (gateway_id, region)`` of the registered ones among ``meter_ids``."""

    @abstractmethod
    def _neighbours(
        self, connection: Connection, keys: Sequence[tuple[str, datetime]]
    ) -> dict[tuple[str, datetime], Neighbours]:
        """The stored windows just before and after each ``(meter_id, window_start)``."""

    @abstractmethod
    def _delete_windows_before(self, connection: Connection, cutoff: datetime, limit: int) -> int:
        """Delete at most ``limit`` windows starting before ``cutoff``; return how many."""

    def _insert(self, table: Table) -> postgresql.Insert | sqlite.Insert:
        if self.dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    # -- public operations ---------------------------------------------------------------------

    def commit(
        self,
        messages: Sequence[Incoming],
        dead_letters: Sequence[DeadLetterRecord] = (),
    ) -> CommitResult:
        """Store ``messages`` and ``dead_letters`` in one transaction (see the module docstring).

        Raises :class:`StoreUnavailableError` when the database cannot take it now
        (nothing was stored; try again later). When the database refuses the
        whole for another reason, each message is committed on its own and one
        that still fails is dead-lettered as ``storage_failed``, so one poisonous
        message cannot stall ingest.
        """
        try:
            return self._commit_once(messages, dead_letters)
        except StoreUnavailableError:
            raise
        except StoreError as exc:
            if not messages:
                raise
            _log.error(
                "commit of %d messages refused (%s); retrying one by one", len(messages), exc
            )
        return self._commit_one_by_one(messages, dead_letters)

    def apply_birth(self, birth: GatewayBirth, *, topic: str = "", payload: bytes = b"") -> None:
        """Apply one birth message on its own (registry, meters, presence)."""
        now = self._clock()
        self.commit([Incoming(topic, payload, birth, now)])

    def apply_state(self, state: GatewayState, *, topic: str = "", payload: bytes = b"") -> None:
        """Apply one state message on its own (online/offline, last seen)."""
        now = self._clock()
        self.commit([Incoming(topic, payload, state, now)])

    def retention(self, older_than: datetime, *, batch_size: int = 10_000) -> int:
        """Delete minute windows starting before ``older_than`` in batches; return how many.

        Each batch is its own short transaction, so ingest is never blocked for
        long. Rollups and regional load stay; gaps that ended before the cutoff go.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        deleted = 0
        while True:
            count = self._transaction(
                lambda conn: self._delete_windows_before(conn, older_than, batch_size)
            )
            deleted += count
            if count < batch_size:
                break
        self._transaction(
            lambda conn: conn.execute(delete(_gaps).where(_gaps.c.gap_end <= older_than))
        )
        return deleted

    # -- commit --------------------------------------------------------------------------------

    def _commit_once(
        self, messages: Sequence[Incoming], dead_letters: Sequence[DeadLetterRecord]
    ) -> CommitResult:
        now = self._clock()
        work = _Work(now=now, result=CommitResult(), letters=list(dead_letters))
        try:
            self._transaction(lambda conn: self._commit_work(conn, messages, work))
        except _StaleCacheError:
            _log.warning("the tail cache was stale; committing again without it")
            self._forget_tails()
            work = _Work(now=now, result=CommitResult(), letters=list(dead_letters))
            work.use_tails = False
            self._run_uncached(messages, work)
        except BaseException:
            # Whether the database committed is unknown: trust nothing cached.
            self._forget_tails()
            raise
        expires = time.monotonic() + self._options.registry_cache_s
        for meter_id, (gateway_id, region) in work.cache_updates.items():
            self._owner_cache[meter_id] = (gateway_id, region, expires)
        self._remember_tails(work)
        return work.result

    def _run_uncached(self, messages: Sequence[Incoming], work: _Work) -> None:
        try:
            self._transaction(lambda conn: self._commit_work(conn, messages, work))
        except BaseException:
            self._forget_tails()
            raise

    def _forget_tails(self) -> None:
        self._tails.clear()
        self._tail_gateways.clear()
        self._versions.clear()

    def _remember_tails(self, work: _Work) -> None:
        if len(self._tails) + len(work.tail_updates) > MAX_CACHED_TAILS:
            self._forget_tails()
        self._versions.update(work.versions)
        owners = work.owners
        for meter_id, tail in work.tail_updates.items():
            self._tails[meter_id] = tail
            self._tail_gateways.setdefault(owners[meter_id][0], set()).add(meter_id)

    def _commit_one_by_one(
        self, messages: Sequence[Incoming], dead_letters: Sequence[DeadLetterRecord]
    ) -> CommitResult:
        total = CommitResult()
        for item in messages:
            try:
                _merge(total, self._commit_once([item], ()))
            except StoreUnavailableError:
                raise
            except StoreError as exc:
                _log.error("dead-lettering a message the database refuses: %s", exc)
                letter = DeadLetterRecord(
                    topic=item.topic,
                    payload=item.payload,
                    reason=HubReason.STORAGE_FAILED,
                    message=f"the database refused it: {exc}"[:1000],
                    received_at=item.received_at,
                    gateway_id=getattr(item.message, "gateway_id", None),
                    seq=getattr(item.message, "seq", None),
                )
                _merge(total, self._commit_once([], [letter]))
        if dead_letters:
            _merge(total, self._commit_once([], dead_letters))
        return total

    def _commit_work(self, conn: Connection, messages: Sequence[Incoming], work: _Work) -> None:
        presence = [m for m in messages if isinstance(m.message, GatewayBirth | GatewayState)]
        batches = [m for m in messages if isinstance(m.message, WindowBatch | EventBatch)]
        for item in presence:
            if isinstance(item.message, GatewayBirth):
                self._apply_birth(conn, item, item.message, work)
                work.result.births += 1
            elif isinstance(item.message, GatewayState):
                self._apply_state(conn, item, item.message, work)
                work.result.states += 1
        if batches:
            self._commit_batches(conn, batches, work)
        self._write_dead_letters(conn, work)

    def _commit_batches(self, conn: Connection, batches: Sequence[Incoming], work: _Work) -> None:
        # The same batch twice in one commit (a QoS 1 duplicate, a resend) is handled
        # once; the ack names its seq once.
        unique: dict[tuple[str, int], tuple[Incoming, WindowBatch | EventBatch]] = {}
        for item in batches:
            message = item.message
            if isinstance(message, WindowBatch | EventBatch):
                unique.setdefault((message.gateway_id, message.seq), (item, message))
        locks = self._lock_gateways(conn, sorted({gw for gw, _ in unique}), work)
        accepted = self._registered_and_timely(unique.values(), locks, work)
        self._resolve_owners(conn, accepted, locks, work)
        windows: list[tuple[Window, str]] = []
        events: list[dict[str, Any]] = []
        progress: dict[str, int] = {}
        owners = work.owners
        for _, message in self._not_spoofed(accepted, work):
            gateway_id = message.gateway_id
            if isinstance(message, WindowBatch):
                windows += [(w, owners[w.meter_id][1]) for w in message.windows]
                work.result.windows_received += len(message.windows)
            else:
                events += [
                    _event_row(event, gateway_id, owners[event.meter_id][1], work.now)
                    for event in message.events
                ]
                work.result.events_received += len(message.events)
            progress[gateway_id] = max(progress.get(gateway_id, 0), message.seq)
            work.result.ack(gateway_id).seqs.add(message.seq)
            work.result.batches_committed += 1
        if windows:
            self._windows_and_checks(conn, windows, work)
        if events:
            conn.execute(
                self._insert(_events).on_conflict_do_nothing(
                    index_elements=["meter_id", "kind", "at"]
                ),
                events,
            )
        if progress:
            conn.execute(
                update(_gw)
                .where(_gw.c.gateway_id == bindparam("gid"))
                .values(
                    highest_seq=bindparam("hs"),
                    last_seen_at=bindparam("seen"),
                    ingest_version=bindparam("version"),
                ),
                [
                    {
                        "gid": gw,
                        "hs": max(seq, locks[gw].highest_seq),
                        "seen": work.now,
                        "version": locks[gw].version + 1,
                    }
                    for gw, seq in progress.items()
                ],
            )
            work.versions = {gw: locks[gw].version + 1 for gw in progress}

    def _registered_and_timely(
        self,
        batches: Iterable[tuple[Incoming, WindowBatch | EventBatch]],
        locks: dict[str, _Lock],
        work: _Work,
    ) -> list[tuple[Incoming, WindowBatch | EventBatch]]:
        """The batches of registered gateways with nothing in the future; refuse the others."""
        accepted = []
        for item, message in batches:
            if message.gateway_id not in locks:
                self._refuse(
                    item,
                    message,
                    HubReason.UNKNOWN_GATEWAY,
                    f"gateway {message.gateway_id!r} is not registered ({self._options.mode} mode)",
                    work,
                )
                continue
            problem = self._future_problem(message, work.now)
            if problem is not None:
                self._refuse(item, message, HubReason.FUTURE_WINDOW, problem, work)
                continue
            accepted.append((item, message))
        return accepted

    def _not_spoofed(
        self, batches: Sequence[tuple[Incoming, WindowBatch | EventBatch]], work: _Work
    ) -> list[tuple[Incoming, WindowBatch | EventBatch]]:
        """The batches whose meters all belong to their sender; refuse the others."""
        owners = work.owners
        kept = []
        for item, message in batches:
            foreign = sorted(m for m in _meter_ids(message) if owners[m][0] != message.gateway_id)
            if not foreign:
                kept.append((item, message))
                continue
            shown = ", ".join(f"{m} (gateway {owners[m][0]})" for m in foreign[:5])
            more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
            self._refuse(
                item,
                message,
                HubReason.SPOOFED_METER,
                f"meters registered to another gateway: {shown}{more}",
                work,
            )
        return kept

    def _future_problem(self, message: WindowBatch | EventBatch, now: datetime) -> str | None:
        horizon = now + timedelta(seconds=self._options.future_tolerance_s)
        if isinstance(message, WindowBatch):
            # Fast path: the latest start, compared once (windows share one tzinfo).
            latest = max(window.window_start for window in message.windows)
            if latest + _span(limits.MAX_WINDOW_SECONDS) <= horizon:
                return None
            for window in message.windows:
                end = window.window_start + timedelta(seconds=window.window_seconds)
                if end > horizon:
                    return (
                        f"window {window.meter_id}@{window.window_start.isoformat()} ends "
                        f"{(end - now).total_seconds():.0f} s after the hub's clock "
                        f"(tolerance {self._options.future_tolerance_s:g} s)"
                    )
            return None
        for event in message.events:
            if event.at > horizon:
                return (
                    f"event {event.kind} of {event.meter_id} at {event.at.isoformat()} is "
                    f"{(event.at - now).total_seconds():.0f} s after the hub's clock"
                )
        return None

    def _refuse(
        self,
        item: Incoming,
        message: WindowBatch | EventBatch,
        reason: HubReason,
        text: str,
        work: _Work,
    ) -> None:
        work.letters.append(
            DeadLetterRecord(
                topic=item.topic,
                payload=item.payload,
                reason=reason,
                message=text[:1000],
                received_at=item.received_at,
                gateway_id=message.gateway_id,
                seq=message.seq,
            )
        )
        work.result.batches_rejected += 1

    # -- registry ------------------------------------------------------------------------------

    def _lock_gateways(
        self, conn: Connection, gateway_ids: Sequence[str], work: _Work
    ) -> dict[str, _Lock]:
        """Lock the gateways' rows (id order: no deadlocks); register unknown ones in demo mode."""
        if not gateway_ids:
            return {}
        query = (
            select(_gw.c.gateway_id, _gw.c.region, _gw.c.highest_seq, _gw.c.ingest_version)
            .where(_gw.c.gateway_id.in_(gateway_ids))
            .order_by(_gw.c.gateway_id)
            .with_for_update()
        )
        locks = {
            row.gateway_id: _Lock(row.region, row.highest_seq, row.ingest_version)
            for row in conn.execute(query)
        }
        missing = [gw for gw in gateway_ids if gw not in locks]
        if missing and self._options.mode == "demo":
            region = self._options.demo_region
            self._ensure_region(conn, region, work.now)
            conn.execute(
                self._insert(_gw).on_conflict_do_nothing(index_elements=["gateway_id"]),
                [_new_gateway(gw, region, work.now) for gw in missing],
            )
            _log.info("registered unknown gateways %s in region %s (demo mode)", missing, region)
            query = query.where(_gw.c.gateway_id.in_(missing))
            locks |= {
                row.gateway_id: _Lock(row.region, row.highest_seq, row.ingest_version)
                for row in conn.execute(query)
            }
        for gateway_id, lock in locks.items():
            if self._versions.get(gateway_id) != lock.version:
                # Another worker committed for this gateway since we did (or we never
                # did): what we remember of its meters may be out of date.
                for meter_id in self._tail_gateways.pop(gateway_id, ()):
                    self._tails.pop(meter_id, None)
                self._versions.pop(gateway_id, None)
        return locks

    def _ensure_region(self, conn: Connection, name: str, now: datetime) -> None:
        options = self._options
        conn.execute(
            self._insert(_regions).on_conflict_do_nothing(index_elements=["name"]),
            {
                "name": name,
                "timezone": options.demo_region_timezone,
                "capacity_kw": options.demo_region_capacity_kw,
                "currency": options.demo_region_currency,
                "created_at": now,
            },
        )

    def _owners(self, conn: Connection, meter_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        found: dict[str, tuple[str, str]] = {}
        missing: list[str] = []
        now = time.monotonic()
        cache = self._owner_cache
        for meter_id in meter_ids:
            entry = cache.get(meter_id)
            if entry is not None and entry[2] > now:
                found[meter_id] = (entry[0], entry[1])
            else:
                missing.append(meter_id)
        if missing:
            found |= self._select_owners(conn, missing)
        return found

    def _resolve_owners(
        self,
        conn: Connection,
        accepted: Sequence[tuple[Incoming, WindowBatch | EventBatch]],
        locks: dict[str, _Lock],
        work: _Work,
    ) -> None:
        """Fill ``work.owners`` for every meter named; register unknown meters to their sender."""
        claims: dict[str, str] = {}
        for _, message in accepted:
            for meter_id in _meter_ids(message):
                claims.setdefault(meter_id, message.gateway_id)
        if not claims:
            return
        owners = self._owners(conn, claims)
        unknown = [m for m in claims if m not in owners]
        if unknown:
            conn.execute(
                self._insert(_meters).on_conflict_do_nothing(index_elements=["meter_id"]),
                [
                    _new_meter(m, claims[m], locks[claims[m]].region, work.now, None)
                    for m in unknown
                ],
            )
            # Re-read: another worker may have registered some of them meanwhile.
            owners |= self._select_owners(conn, unknown)
        work.owners = owners
        work.cache_updates |= owners

    def _apply_birth(
        self, conn: Connection, item: Incoming, birth: GatewayBirth, work: _Work
    ) -> None:
        now = work.now
        row = conn.execute(
            select(_gw.c.region).where(_gw.c.gateway_id == birth.gateway_id).with_for_update()
        ).first()
        region = birth.region
        if row is None:
            if self._options.mode != "demo":
                self._presence_letter(
                    item,
                    birth.gateway_id,
                    HubReason.UNKNOWN_GATEWAY,
                    f"birth of unregistered gateway {birth.gateway_id!r} (production mode)",
                    work,
                )
                return
            self._ensure_region(conn, region, now)
            conn.execute(
                self._insert(_gw).on_conflict_do_nothing(index_elements=["gateway_id"]),
                _new_gateway(birth.gateway_id, region, now),
            )
            _log.info("registered gateway %s in region %s from its birth", birth.gateway_id, region)
        elif row.region != region:
            if self._options.mode == "demo":
                self._ensure_region(conn, region, now)
                conn.execute(
                    update(_meters)
                    .where(_meters.c.gateway_id == birth.gateway_id, _meters.c.auto_registered)
                    .values(region=region)
                )
                for meter_id, (gateway_id, _, _) in list(self._owner_cache.items()):
                    if gateway_id == birth.gateway_id:
                        del self._owner_cache[meter_id]
            else:
                _log.warning(
                    "gateway %s announces region %s but is registered in %s; keeping %s",
                    birth.gateway_id,
                    region,
                    row.region,
                    row.region,
                )
                region = row.region
        values: dict[str, Any] = {
            "region": region,
            "agent_version": birth.agent_version,
            "config_hash": birth.config_hash,
            "window_seconds": birth.window_seconds,
            "started_at": birth.started_at,
            "online": True,
            "state_changed_at": now,
            **_outbox_values(birth.outbox),
        }
        if not item.retained:
            values["last_seen_at"] = now
        conn.execute(update(_gw).where(_gw.c.gateway_id == birth.gateway_id).values(**values))
        self._birth_meters(conn, item, birth, region, work)

    def _birth_meters(
        self, conn: Connection, item: Incoming, birth: GatewayBirth, region: str, work: _Work
    ) -> None:
        if not birth.meters:
            return
        ids = [m.meter_id for m in birth.meters]
        owners = self._select_owners(conn, ids)
        new = [m for m in birth.meters if m.meter_id not in owners]
        mine = [m for m in birth.meters if owners.get(m.meter_id, ("",))[0] == birth.gateway_id]
        foreign = sorted(m for m in ids if m in owners and owners[m][0] != birth.gateway_id)
        if new:
            conn.execute(
                self._insert(_meters).on_conflict_do_nothing(index_elements=["meter_id"]),
                [
                    {
                        **_new_meter(m.meter_id, birth.gateway_id, region, work.now, m.profile),
                        "bus": m.bus,
                        "unit_id": m.unit_id,
                    }
                    for m in new
                ],
            )
        if mine:
            conn.execute(
                update(_meters)
                .where(_meters.c.meter_id == bindparam("mid"))
                .values(profile=bindparam("p"), bus=bindparam("b"), unit_id=bindparam("u")),
                [{"mid": m.meter_id, "p": m.profile, "b": m.bus, "u": m.unit_id} for m in mine],
            )
        if foreign:
            self._presence_letter(
                item,
                birth.gateway_id,
                HubReason.SPOOFED_METER,
                "birth claims meters registered to another gateway: " + ", ".join(foreign[:20]),
                work,
            )

    def _apply_state(
        self, conn: Connection, item: Incoming, state: GatewayState, work: _Work
    ) -> None:
        exists = conn.execute(
            select(_gw.c.gateway_id).where(_gw.c.gateway_id == state.gateway_id).with_for_update()
        ).first()
        if exists is None:
            if self._options.mode != "demo":
                self._presence_letter(
                    item,
                    state.gateway_id,
                    HubReason.UNKNOWN_GATEWAY,
                    f"state of unregistered gateway {state.gateway_id!r} (production mode)",
                    work,
                )
            return
        online = state.state is ConnectionState.ONLINE
        values: dict[str, Any] = {"online": online, "state_changed_at": state.at or work.now}
        if online and not item.retained:
            values["last_seen_at"] = work.now
        if state.outbox is not None:
            values |= _outbox_values(state.outbox)
        conn.execute(update(_gw).where(_gw.c.gateway_id == state.gateway_id).values(**values))

    def _presence_letter(
        self, item: Incoming, gateway_id: str, reason: HubReason, text: str, work: _Work
    ) -> None:
        work.letters.append(
            DeadLetterRecord(
                topic=item.topic,
                payload=item.payload,
                reason=reason,
                message=text[:1000],
                received_at=item.received_at,
                gateway_id=gateway_id,
            )
        )

    # -- windows: gaps, late windows, continuity ----------------------------------------------

    def _windows_and_checks(
        self, conn: Connection, windows: Sequence[tuple[Window, str]], work: _Work
    ) -> None:
        known, unknown, gaps, breaks, tails = self._follow_tails(windows, work.use_tails)
        outcome = self._store_windows(conn, known, unknown, self._options.counter_tolerance_kwh)
        if outcome.known_stored != len(known):
            raise _StaleCacheError
        result = work.result
        result.windows_stored += outcome.stored
        gaps += outcome.gaps
        breaks += outcome.breaks
        # Keep cached times in the decoded windows' own tzinfo object: comparing
        # datetimes whose tzinfo objects differ costs ten times more.
        wire = windows[0][0].window_start.tzinfo
        for meter_id, tail in outcome.tails.items():
            start = tail.start.replace(tzinfo=wire)
            mine = tails.get(meter_id)
            if mine is None or start > mine.start:
                tails[meter_id] = Tail(
                    start, tail.end.replace(tzinfo=wire), tail.import_kwh, tail.export_kwh
                )
        work.tail_updates = tails
        if gaps:
            conn.execute(
                self._insert(_gaps).on_conflict_do_nothing(
                    index_elements=["meter_id", "gap_start"]
                ),
                [
                    {"meter_id": m, "gap_start": s, "gap_end": e, "detected_at": work.now}
                    for m, s, e in gaps
                ],
            )
            result.gaps_opened += len(gaps)
        if outcome.late:
            result.late_windows += len(outcome.late)
            self._fill_gaps(conn, outcome.late, work.now)
            breaks += self._late_breaks(conn, outcome.late)
        if breaks:
            self._flag_breaks(conn, breaks, work)

    def _follow_tails(
        self, windows: Sequence[tuple[Window, str]], use_tails: bool
    ) -> tuple[
        list[tuple[Window, str]],
        list[tuple[Window, str]],
        list[tuple[str, datetime, datetime]],
        list[Break],
        dict[str, Tail],
    ]:
        """Split windows into known (after their meter's cached tail) and unknown.

        Known windows are checked here, in time order per meter: a start after the
        previous end opens a gap, a start at it must continue its counters.
        """
        cached = self._tails if use_tails else {}
        by_meter, unknown = _split_by_tail(windows, cached)
        known: list[tuple[Window, str]] = []
        gaps: list[tuple[str, datetime, datetime]] = []
        breaks: list[Break] = []
        tails: dict[str, Tail] = {}
        tolerance = self._options.counter_tolerance_kwh
        relative = REL_COUNTER_TOLERANCE
        # The hot loop of steady-state ingest: plain locals, one Tail per meter.
        for meter_id, pairs in by_meter.items():
            if len(pairs) > 1:
                pairs.sort(key=_start_of)
            tail = cached[meter_id]
            last_start, last_end = tail.start, tail.end
            last_import, last_export = tail.import_kwh, tail.export_kwh
            for pair in pairs:
                window = pair[0]
                start = window.window_start
                if start == last_start:
                    continue  # the same window twice in this commit
                if start > last_end:
                    gaps.append((meter_id, last_end, start))
                elif start == last_end:
                    begin_import = window.import_kwh - window.import_delta_kwh
                    begin_export = window.export_kwh - window.export_delta_kwh
                    if abs(begin_import - last_import) > tolerance + relative * abs(
                        last_import
                    ) or abs(begin_export - last_export) > tolerance + relative * abs(last_export):
                        breaks.append(
                            Break(
                                meter_id,
                                start,
                                last_import,
                                begin_import,
                                last_export,
                                begin_export,
                            )
                        )
                known.append(pair)
                end = start + _span(window.window_seconds)
                if end > last_end:
                    last_start, last_end = start, end
                    last_import, last_export = window.import_kwh, window.export_kwh
            tails[meter_id] = Tail(last_start, last_end, last_import, last_export)
        return known, unknown, gaps, breaks, tails

    def _fill_gaps(self, conn: Connection, late: Sequence[LateWindow], now: datetime) -> None:
        """Shrink, split or delete the recorded gaps the late windows fall in."""
        by_meter: dict[str, list[LateWindow]] = defaultdict(list)
        for window in late:
            by_meter[window.meter_id].append(window)
        lo = min(w.window_start for w in late)
        hi = max(w.window_end for w in late)
        rows = conn.execute(
            select(_gaps.c.meter_id, _gaps.c.gap_start, _gaps.c.gap_end).where(
                _gaps.c.meter_id.in_(list(by_meter)),
                _gaps.c.gap_end > lo,
                _gaps.c.gap_start < hi,
            )
        )
        gaps: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
        for row in rows:
            gaps[row.meter_id].append((row.gap_start, row.gap_end))
        removed: list[dict[str, Any]] = []
        added: list[dict[str, Any]] = []
        for meter_id, spans in gaps.items():
            original = set(spans)
            current = sorted(spans)
            for window in sorted(by_meter[meter_id], key=lambda w: w.window_start):
                current = _subtract(current, window.window_start, window.window_end)
            final = set(current)
            removed += [{"m": meter_id, "s": s} for s, _ in original - final]
            added += [
                {"meter_id": meter_id, "gap_start": s, "gap_end": e, "detected_at": now}
                for s, e in final - original
            ]
        if removed:
            conn.execute(
                delete(_gaps).where(
                    _gaps.c.meter_id == bindparam("m"), _gaps.c.gap_start == bindparam("s")
                ),
                removed,
            )
        if added:
            conn.execute(self._insert(_gaps), added)

    def _late_breaks(self, conn: Connection, late: Sequence[LateWindow]) -> list[Break]:
        """Continuity of late windows with their neighbours, now that they are stored."""
        neighbours = self._neighbours(conn, [(w.meter_id, w.window_start) for w in late])
        found: dict[tuple[str, datetime], Break] = {}
        for window in late:
            around = neighbours.get((window.meter_id, window.window_start))
            if around is None:
                continue
            for before, after in ((around.previous, window), (window, around.following)):
                if before is None or after is None or before.window_end != after.window_start:
                    continue
                problem = self._discontinuity(before, after)
                if problem is not None:
                    found[(problem.meter_id, problem.window_start)] = problem
        return list(found.values())

    def _discontinuity(self, before: LateWindow, after: LateWindow) -> Break | None:
        start_import = after.import_kwh - after.import_delta_kwh
        start_export = after.export_kwh - after.export_delta_kwh
        tolerance = self._options.counter_tolerance_kwh
        if abs(start_import - before.import_kwh) <= tolerance + REL_COUNTER_TOLERANCE * abs(
            before.import_kwh
        ) and abs(start_export - before.export_kwh) <= tolerance + REL_COUNTER_TOLERANCE * abs(
            before.export_kwh
        ):
            return None
        return Break(
            after.meter_id,
            after.window_start,
            before.import_kwh,
            start_import,
            before.export_kwh,
            start_export,
        )

    def _flag_breaks(self, conn: Connection, breaks: Sequence[Break], work: _Work) -> None:
        conn.execute(
            update(_windows)
            .where(_windows.c.meter_id == bindparam("m"), _windows.c.window_start == bindparam("s"))
            .values(counter_break=True),
            [{"m": b.meter_id, "s": b.window_start} for b in breaks],
        )
        owners = work.owners
        conn.execute(
            self._insert(_events).on_conflict_do_nothing(index_elements=["meter_id", "kind", "at"]),
            [
                {
                    "meter_id": b.meter_id,
                    "kind": COUNTER_BREAK_EVENT,
                    "at": b.window_start,
                    "gateway_id": owners[b.meter_id][0],
                    "region": owners[b.meter_id][1],
                    "source": "hub",
                    "details": {
                        "previous_import_kwh": b.previous_import_kwh,
                        "start_import_kwh": b.start_import_kwh,
                        "previous_export_kwh": b.previous_export_kwh,
                        "start_export_kwh": b.start_export_kwh,
                    },
                    "received_at": work.now,
                }
                for b in breaks
            ],
        )
        work.result.counter_breaks += len(breaks)
        _log.info("flagged %d counter breaks (first: %s)", len(breaks), breaks[0])

    # -- dead letters --------------------------------------------------------------------------

    def _write_dead_letters(self, conn: Connection, work: _Work) -> None:
        if not work.letters:
            return
        conn.execute(
            _dead.insert(),
            [
                {
                    "received_at": letter.received_at,
                    "topic": letter.topic,
                    "payload": letter.payload,
                    "reason": str(letter.reason),
                    "message": letter.message[:1000],
                    "gateway_id": letter.gateway_id,
                    "seq": letter.seq,
                    "hub_id": self._options.hub_id,
                }
                for letter in work.letters
            ],
        )
        result = work.result
        result.dead_letters += len(work.letters)
        for letter in work.letters:
            if letter.gateway_id is not None and letter.seq is not None:
                result.ack(letter.gateway_id).rejected.add(letter.seq)


# -- helpers ------------------------------------------------------------------------------------


def _start_of(pair: tuple[Window, str]) -> datetime:
    return pair[0].window_start


_SPANS: dict[int, timedelta] = {}


def _span(seconds: int) -> timedelta:
    """``timedelta(seconds=seconds)``, built once per length."""
    span = _SPANS.get(seconds)
    if span is None:
        span = _SPANS[seconds] = timedelta(seconds=seconds)
    return span


def _split_by_tail(
    windows: Sequence[tuple[Window, str]], cached: dict[str, Tail]
) -> tuple[dict[str, list[tuple[Window, str]]], list[tuple[Window, str]]]:
    """Windows after their meter's cached tail, by meter; and all the others."""
    by_meter: dict[str, list[tuple[Window, str]]] = {}
    unknown: list[tuple[Window, str]] = []
    for pair in windows:
        window = pair[0]
        tail = cached.get(window.meter_id)
        if tail is not None and window.window_start >= tail.end:
            entry = by_meter.get(window.meter_id)
            if entry is None:
                by_meter[window.meter_id] = [pair]
            else:
                entry.append(pair)
        else:
            unknown.append(pair)
    return by_meter, unknown


def _meter_ids(message: WindowBatch | EventBatch) -> set[str]:
    if isinstance(message, WindowBatch):
        return {w.meter_id for w in message.windows}
    return {e.meter_id for e in message.events}


def _event_row(event: Any, gateway_id: str, region: str, now: datetime) -> dict[str, Any]:
    details = event.model_dump(mode="json", exclude={"meter_id", "kind", "at"})
    return {
        "meter_id": event.meter_id,
        "kind": str(event.kind),
        "at": event.at,
        "gateway_id": gateway_id,
        "region": region,
        "source": "edge",
        "details": details,
        "received_at": now,
    }


def _new_gateway(gateway_id: str, region: str, now: datetime) -> dict[str, Any]:
    return {
        "gateway_id": gateway_id,
        "region": region,
        "online": False,
        "highest_seq": 0,
        "ingest_version": 0,
        "auto_registered": True,
        "registered_at": now,
    }


def _new_meter(
    meter_id: str, gateway_id: str, region: str, now: datetime, profile: str | None
) -> dict[str, Any]:
    return {
        "meter_id": meter_id,
        "gateway_id": gateway_id,
        "region": region,
        "profile": profile,
        "bus": None,
        "unit_id": None,
        "status": "active",
        "customer_id": None,
        "installed_at": None,
        "auto_registered": True,
        "registered_at": now,
    }


def _outbox_values(outbox: OutboxStats) -> dict[str, Any]:
    return {
        "outbox_pending_batches": outbox.pending_batches,
        "outbox_dropped_batches": outbox.dropped_batches,
        "outbox_dropped_windows": outbox.dropped_windows,
    }


def _subtract(
    spans: Sequence[tuple[datetime, datetime]], start: datetime, end: datetime
) -> list[tuple[datetime, datetime]]:
    """``spans`` minus ``[start, end)``."""
    out: list[tuple[datetime, datetime]] = []
    for s, e in spans:
        if e <= start or s >= end:
            out.append((s, e))
            continue
        if s < start:
            out.append((s, start))
        if end < e:
            out.append((end, e))
    return out


def _merge(total: CommitResult, part: CommitResult) -> None:
    for gateway_id, entry in part.acks.items():
        mine = total.ack(gateway_id)
        mine.seqs |= entry.seqs
        mine.rejected |= entry.rejected
    for name in (
        "batches_committed",
        "batches_rejected",
        "windows_received",
        "windows_stored",
        "events_received",
        "births",
        "states",
        "dead_letters",
        "gaps_opened",
        "late_windows",
        "counter_breaks",
    ):
        setattr(total, name, getattr(total, name) + getattr(part, name))


def rollup_upsert(*, least: str, greatest: str) -> str:
    """The ``ON CONFLICT`` clause merging a batch's rollup rows into stored ones.

    Both backends merge the same way; only the two-argument min/max functions
    are spelled differently (``least``/``greatest`` on PostgreSQL, ``min``/``max``
    on SQLite).
    """
    return f"""\
    ON CONFLICT (meter_id, bucket_start) DO UPDATE SET
        windows = r.windows + excluded.windows,
        seconds = r.seconds + excluded.seconds,
        samples_got = r.samples_got + excluded.samples_got,
        samples_expected = r.samples_expected + excluded.samples_expected,
        import_kwh = r.import_kwh + excluded.import_kwh,
        export_kwh = r.export_kwh + excluded.export_kwh,
        power_min_kw = {least}(r.power_min_kw, excluded.power_min_kw),
        power_max_kw = {greatest}(r.power_max_kw, excluded.power_max_kw),
        power_avg_kw = (r.power_avg_kw * r.seconds + excluded.power_avg_kw * excluded.seconds)
            / (r.seconds + excluded.seconds),
        first_window_start = {least}(r.first_window_start, excluded.first_window_start),
        first_import_kwh = CASE WHEN excluded.first_window_start < r.first_window_start
            THEN excluded.first_import_kwh ELSE r.first_import_kwh END,
        first_export_kwh = CASE WHEN excluded.first_window_start < r.first_window_start
            THEN excluded.first_export_kwh ELSE r.first_export_kwh END,
        last_window_start = {greatest}(r.last_window_start, excluded.last_window_start),
        last_import_kwh = CASE WHEN excluded.last_window_start > r.last_window_start
            THEN excluded.last_import_kwh ELSE r.last_import_kwh END,
        last_export_kwh = CASE WHEN excluded.last_window_start > r.last_window_start
            THEN excluded.last_export_kwh ELSE r.last_export_kwh END
"""
