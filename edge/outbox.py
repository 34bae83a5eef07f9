"""The edge agent's store-and-forward outbox: batches wait in SQLite until the hub acks them.

Every window batch and event batch the agent produces is stored here under a
gateway **seq** before it is published, and stays until the hub acknowledges
that seq on the gateway's ``ack`` topic (a broker PUBACK is not enough; see
"End-to-end delivery" in ``docs/protocol.md``).

Using it (the poller adds, the publisher sends and deletes)::

    with Outbox(data_dir / DEFAULT_FILENAME, clock=clock) as outbox:
        for chunk in split_windows(closed_windows):
            outbox.add_windows(chunk)                      # durable once it returns

        # publisher loop: new batches first, then those whose ack is overdue
        for batch in outbox.due(ack_timeout_s=30.0, limit=50):
            # historical: resent, or drained from a backlog built up while offline
            message = outbox.build_message(batch, gateway_id=gw, historical=backlog)
            await client.publish(gateway_topic(gw, batch.topic_kind), encode(message), qos=1)
            outbox.mark_sent([batch.seq])

        outbox.acknowledge([*ack.seqs, *ack.rejected])     # on the gateway's ack topic
        outbox.pending(from_seq=s, limit=50)               # hub/state turned online: page
                                                           # through everything, s = last + 1
        outbox.pending(from_seq=cmd.from_seq, to_seq=cmd.to_seq, limit=50)  # resend command
        birth = GatewayBirth(..., outbox=outbox.stats())

Design points:

* **Body and envelope.** A batch is stored as the encoded JSON array of its items
  (windows or events). The envelope (``seq``, ``sent_at``, ``historical``) is
  built at send time by :meth:`Outbox.build_message`, because ``sent_at`` and
  ``historical`` change on every resend. ``add_*`` checks what the protocol
  checks (item count, encoded size, unique ``(meter_id, window_start)``), so a
  stored batch can always be sent.
* **Seqs** are positive and strictly increasing across restarts and across
  acks that empty the outbox; windows and events share them. The last seq lives
  in the ``meta`` table, written in the insert's transaction, and in a sidecar
  file ``<db>.seq`` (written atomically after each add) so that seqs stay
  monotonic when the database file is lost or replaced. When neither is
  readable at start, seqs restart from the last one this process knows (1 for
  a new process) in memory, and batches held in memory are renumbered above the
  database's seqs once it is back (logged at WARNING). The pending seqs have
  gaps (acked or dropped batches); seqs are never reused.
* **Durability.** WAL mode. Inserts commit with ``synchronous=FULL``: a seq
  returned by ``add_*`` survives ``kill -9`` and power loss. ``mark_sent`` and
  ``acknowledge`` commit with ``synchronous=NORMAL`` (still safe against a
  process crash); losing one to a power cut only causes a resend, which the hub
  deduplicates.
* **Storage.** ``batches`` (one small row per batch: seq, kind, times,
  counts, attempts; indexed by ``last_sent_at``), ``bodies`` (seq → body, kept
  apart so scans never read bodies) and ``meta`` (last seq, drop counts, schema
  version). Operators can read the file with ``sqlite3`` while the agent runs.
* **Bounds.** When a new batch would exceed :class:`OutboxLimits`, the oldest
  batches are dropped (never the new one), counted in ``meta`` (so the counts
  survive restarts), reported by :meth:`Outbox.stats` and logged at WARNING.
* **Failures.** A corrupt database file is moved aside to
  ``<db>.corrupt-<UTC timestamp>`` (with its ``-wal``) and a new one is started.
  When the database cannot be opened or written (unwritable or missing
  directory, full disk, I/O error, locked by another process) the outbox logs
  one ERROR per outage naming the path and the cause, keeps accepting batches
  into an in-memory queue with the same bounds and drop policy, keeps issuing
  seqs, and retries at most every ``retry_interval_s`` on the next call; once
  the database works again the queue is written to it and an INFO line says so.
  During an outage ``due``/``pending`` see only the in-memory batches and acks
  for batches on disk are remembered and applied on recovery. Batches held in
  memory are lost if the process dies before recovery. Nothing here raises on a
  storage failure; :attr:`Outbox.storage_ok` tells the health check.

Threading: one ``sqlite3`` connection, used from one thread (the connection
refuses any other). Call every method, including :meth:`Outbox.open`, from the
agent's event-loop thread. Each call is one short transaction: ``add_*`` waits
for one fsync (about 3 ms on an SSD, tens of ms on an SD card, once per window
period); ``due``, ``pending``, ``mark_sent`` and ``acknowledge`` take well under
a millisecond to a few, also with 100 000 batches pending. ``build_message``
costs about 25 µs per window (pydantic validation): a full day of backlog for
32 meters (46 080 windows) is read, built and encoded in about 1.2 s on a
desktop CPU. If the fsync ever matters, give the whole outbox a dedicated
single-thread executor (open it there too), not ``asyncio.to_thread``, whose
pool threads vary.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Final, Self, TypeVar

import sqlite_utils
from pydantic import BaseModel, TypeAdapter, ValidationError

from segs.edge.exceptions import (
    CorruptBatchError,
    InvalidBatchError,
    OutboxClosedError,
    OutboxError,
)
from segs.edge.files import write_atomically
from segs.protocol.ids import validate_id
from segs.protocol.limits import (
    MAX_EVENTS_PER_BATCH,
    MAX_PAYLOAD_BYTES,
    MAX_SEQ,
    MAX_WINDOWS_PER_BATCH,
)
from segs.protocol.messages import EventBatch, MeterEvent, OutboxStats, Window, WindowBatch
from segs.protocol.topics import TopicKind

__all__ = [
    "DEFAULT_FILENAME",
    "ENVELOPE_BUDGET_BYTES",
    "MAX_BODY_BYTES",
    "BatchKind",
    "Outbox",
    "OutboxLimits",
    "PendingBatch",
    "split_events",
    "split_windows",
]

_log = logging.getLogger(__name__)

DEFAULT_FILENAME: Final = "outbox.db"
"""The outbox's file name under the agent's ``data_dir``."""

ENVELOPE_BUDGET_BYTES: Final = 512
"""Room kept for the envelope around a stored body (about 200 bytes at the maximum)."""

MAX_BODY_BYTES: Final = MAX_PAYLOAD_BYTES - ENVELOPE_BUDGET_BYTES
"""Largest encoded item array one batch may hold, so the message fits ``MAX_PAYLOAD_BYTES``."""

_SCHEMA_VERSION: Final = 1
_TIME_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.%fZ"  # fixed width: text order is time order
_MAX_AGE_S: Final = 1e10  # OutboxStats' bound
_JOURNAL_SIZE_LIMIT: Final = 8 * 1024 * 1024  # truncate the WAL after a backlog drains

_WINDOWS: Final = TypeAdapter(tuple[Window, ...])
_EVENTS: Final = TypeAdapter(tuple[MeterEvent, ...])

# Errors that mean "the code is wrong", never "the storage is unusable".
_BUG_ERRORS: Final = (sqlite3.ProgrammingError, sqlite3.IntegrityError, sqlite3.InterfaceError)
_STORAGE_ERRORS: Final = (sqlite3.DatabaseError, OSError)
_CORRUPT_CODES: Final = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})

# Bodies live in their own table, so scans of the small rows never read them.
_SELECT_RANGE: Final = (
    "SELECT b.seq, b.kind, b.created_at, b.items, b.attempts, b.last_sent_at, d.body "
    "FROM batches AS b JOIN bodies AS d ON d.seq = b.seq "
    "WHERE b.seq BETWEEN ? AND ? ORDER BY b.seq LIMIT ?"
)
_SELECT_UNSENT: Final = (
    "SELECT b.seq, b.kind, b.created_at, b.items, b.attempts, b.last_sent_at, d.body "
    "FROM batches AS b JOIN bodies AS d ON d.seq = b.seq "
    "WHERE b.last_sent_at IS NULL ORDER BY b.seq LIMIT ?"
)
_SELECT_OVERDUE: Final = (  # index order: stops after `limit` rows however many are pending
    "SELECT b.seq, b.kind, b.created_at, b.items, b.attempts, b.last_sent_at, d.body "
    "FROM batches AS b JOIN bodies AS d ON d.seq = b.seq "
    "WHERE b.last_sent_at <= ? ORDER BY b.last_sent_at, b.seq LIMIT ?"
)

_M = TypeVar("_M", bound=BaseModel)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class BatchKind(StrEnum):
    """What a stored batch holds; also the name of the topic it is published on."""

    WINDOWS = "windows"
    EVENTS = "events"


@dataclass(frozen=True)
class OutboxLimits:
    """How much the outbox holds before it drops its oldest batches.

    The same bounds apply to the in-memory queue while the database is unusable.
    """

    max_batches: int = 100_000
    """Pending batches (a day of one-minute batches is 1440)."""
    max_bytes: int = 256 * 1024 * 1024
    """Sum of the stored bodies (the encoded item arrays), bytes."""

    def __post_init__(self) -> None:
        if self.max_batches < 1:
            raise ValueError(f"max_batches must be at least 1, not {self.max_batches}")
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, not {self.max_bytes}")


@dataclass(frozen=True)
class PendingBatch:
    """A batch waiting for the hub's ack."""

    seq: int
    kind: BatchKind
    created_at: datetime
    """When it was added (UTC)."""
    items: int
    """How many windows or events it holds."""
    body: bytes
    """The encoded JSON array of its windows or events."""
    attempts: int = 0
    """How many times it was marked sent."""
    last_sent_at: datetime | None = None
    """When it was last marked sent (UTC); ``None`` when never sent."""

    @property
    def size(self) -> int:
        """The body's size, bytes."""
        return len(self.body)

    @property
    def topic_kind(self) -> TopicKind:
        """The kind of topic to publish it on."""
        return TopicKind.WINDOWS if self.kind is BatchKind.WINDOWS else TopicKind.EVENTS

    @property
    def window_count(self) -> int:
        """How many windows it holds (0 for an event batch); counted when it is dropped."""
        return self.items if self.kind is BatchKind.WINDOWS else 0


def split_windows(
    windows: Sequence[Window],
    *,
    max_bytes: int = MAX_BODY_BYTES,
    max_items: int = MAX_WINDOWS_PER_BATCH,
) -> list[tuple[Window, ...]]:
    """Cut ``windows`` into chunks that each fit one batch, keeping their order.

    A chunk holds at most ``max_items`` windows and encodes to at most
    ``max_bytes``. Raises :class:`ValueError` when one window alone is too large.
    """
    return _split(windows, max_bytes=max_bytes, max_items=max_items)


def split_events(
    events: Sequence[MeterEvent],
    *,
    max_bytes: int = MAX_BODY_BYTES,
    max_items: int = MAX_EVENTS_PER_BATCH,
) -> list[tuple[MeterEvent, ...]]:
    """Cut ``events`` into chunks that each fit one batch; see :func:`split_windows`."""
    return _split(events, max_bytes=max_bytes, max_items=max_items)


def _split(items: Sequence[_M], *, max_bytes: int, max_items: int) -> list[tuple[_M, ...]]:
    if max_items < 1 or max_bytes < 3:
        raise ValueError("max_items must be at least 1 and max_bytes at least 3")
    chunks: list[tuple[_M, ...]] = []
    chunk: list[_M] = []
    size = 2  # the brackets
    for item in items:
        # The array encoder writes each item exactly as model_dump_json does.
        item_size = len(item.model_dump_json(exclude_none=True))
        if item_size + 2 > max_bytes:
            raise ValueError(f"one item encodes to {item_size} bytes; the limit is {max_bytes}")
        extra = item_size + (1 if chunk else 0)  # a comma before every item but the first
        if chunk and (len(chunk) >= max_items or size + extra > max_bytes):
            chunks.append(tuple(chunk))
            chunk, size, extra = [], 2, item_size
        chunk.append(item)
        size += extra
    if chunk:
        chunks.append(tuple(chunk))
    return chunks


class Outbox:
    """The SQLite store-and-forward outbox at ``path`` (usually ``data_dir / DEFAULT_FILENAME``).

    The constructor only stores settings; :meth:`open` (or ``with``) opens the
    database, creating the directory and file when needed. See the module
    docstring for the protocol it serves, its failure handling and threading.
    """

    def __init__(
        self,
        path: Path,
        *,
        limits: OutboxLimits | None = None,
        clock: Callable[[], datetime] = _utc_now,
        retry_interval_s: float = 5.0,
        busy_timeout_s: float = 0.5,
    ) -> None:
        if retry_interval_s < 0 or busy_timeout_s < 0:
            raise ValueError("retry_interval_s and busy_timeout_s must not be negative")
        self._path = Path(path)
        self._seq_path = self._path.with_name(self._path.name + ".seq")
        self._limits = limits if limits is not None else OutboxLimits()
        self._clock = clock
        self._retry_interval_s = retry_interval_s
        self._busy_timeout_s = busy_timeout_s

        self._opened = False
        self._db: sqlite_utils.Database | None = None
        self._sync_full: bool | None = None
        self._last_seq = 0
        # Batches not (yet) in the database, in seq order; empty whenever _db is usable.
        self._memory: dict[int, PendingBatch] = {}
        self._memory_bytes = 0
        self._deferred_acks: set[int] = set()
        # Drop counters: totals, and the part of them not yet written to meta.
        self._dropped_batches = 0
        self._dropped_windows = 0
        self._unsaved_batches = 0
        self._unsaved_windows = 0
        self._meta_missing = False
        # What the database holds, as of the last successful transaction.
        self._db_batches = 0
        self._db_bytes = 0
        self._db_windows = 0
        self._db_oldest: datetime | None = None
        self._db_last_seq = 0
        # Outage state.
        self._outage: str | None = None
        self._next_retry = 0.0
        self._sidecar_failing = False

    # ------------------------------------------------------------ lifecycle

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @property
    def limits(self) -> OutboxLimits:
        """The bounds in force."""
        return self._limits

    @property
    def is_open(self) -> bool:
        """True between :meth:`open` and :meth:`close`."""
        return self._opened

    @property
    def storage_ok(self) -> bool:
        """True while batches go to the database; False while they are held in memory."""
        return self._opened and self._db is not None

    @property
    def last_seq(self) -> int:
        """The last seq issued (0 before the first batch ever)."""
        return self._last_seq

    def open(self) -> None:
        """Open (or create) the database; a storage failure is logged, not raised.

        Raises :class:`OutboxError` when already open, or when the file was
        written by a newer, incompatible version of the agent.
        """
        if self._opened:
            raise OutboxError(f"outbox {self._path} is already open")
        # Read before anything can fail: seqs issued in memory must continue from it.
        self._last_seq = max(self._last_seq, self._read_sidecar())
        self._reconnect()
        self._opened = True

    def close(self) -> None:
        """Write any batches held in memory if possible, then close the database.

        Batches that still cannot be written are lost; that is logged at ERROR.
        Closing a closed outbox does nothing.
        """
        if not self._opened:
            return
        if self._memory and self._db is None:
            self._reconnect()
        if self._memory:
            _log.error(
                "outbox %s closed with %d batches (seq %d..%d) only in memory: they are lost",
                self._path,
                len(self._memory),
                next(iter(self._memory)),
                self._last_seq,
            )
            self._memory.clear()
            self._memory_bytes = 0
        self._disconnect()
        self._opened = False

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --------------------------------------------------------------- adding

    def add_windows(self, windows: Sequence[Window]) -> int:
        """Store ``windows`` as one batch and return its seq; durable once this returns.

        Raises :class:`InvalidBatchError` (a ``ValueError``) when the batch is
        empty, has more than ``MAX_WINDOWS_PER_BATCH`` windows, encodes to more
        than ``MAX_BODY_BYTES`` (see :func:`split_windows`) or repeats a
        ``(meter_id, window_start)``.
        """
        items = tuple(windows)
        if not 1 <= len(items) <= MAX_WINDOWS_PER_BATCH:
            raise InvalidBatchError(
                f"a window batch holds 1..{MAX_WINDOWS_PER_BATCH} windows, not {len(items)}"
            )
        if len({(w.meter_id, w.window_start) for w in items}) != len(items):
            raise InvalidBatchError("a (meter_id, window_start) appears twice in the batch")
        return self._add(
            BatchKind.WINDOWS, len(items), _WINDOWS.dump_json(items, exclude_none=True)
        )

    def add_events(self, events: Sequence[MeterEvent]) -> int:
        """Store ``events`` as one batch and return its seq; see :meth:`add_windows`."""
        items = tuple(events)
        if not 1 <= len(items) <= MAX_EVENTS_PER_BATCH:
            raise InvalidBatchError(
                f"an event batch holds 1..{MAX_EVENTS_PER_BATCH} events, not {len(items)}"
            )
        return self._add(BatchKind.EVENTS, len(items), _EVENTS.dump_json(items, exclude_none=True))

    def _add(self, kind: BatchKind, items: int, body: bytes) -> int:
        self._require_open()
        limit = min(MAX_BODY_BYTES, self._limits.max_bytes)
        if len(body) > limit:
            raise InvalidBatchError(
                f"the {kind.value} batch encodes to {len(body)} bytes; the limit is {limit}"
            )
        created_at = self._now()
        self._maybe_recover()
        if self._last_seq >= MAX_SEQ:
            raise OutboxError("the gateway seq space is exhausted")
        self._last_seq += 1
        seq = self._last_seq
        self._hold([PendingBatch(seq, kind, created_at, items, body)])
        if self._db is not None:
            with self._storage_guard():
                self._flush(self._db.conn)
        self._write_sidecar()
        return seq

    # ------------------------------------------------------------- reading

    def due(self, *, ack_timeout_s: float, limit: int) -> list[PendingBatch]:
        """Batches to publish now, at most ``limit``.

        First the batches never sent, oldest seq first; then those sent at least
        ``ack_timeout_s`` ago (by the clock) and still not acknowledged, longest
        waiting first (ties by seq).
        """
        if ack_timeout_s < 0 or limit < 1:
            raise ValueError("ack_timeout_s must not be negative and limit must be at least 1")
        self._require_open()
        self._maybe_recover()
        cutoff = self._now() - timedelta(seconds=ack_timeout_s)
        if self._db is not None:
            with self._storage_guard():
                return self._due_from_db(self._db.conn, _format_time(cutoff), limit)
        fresh = [b for b in self._memory.values() if b.last_sent_at is None][:limit]
        overdue = sorted(
            (b for b in self._memory.values() if b.last_sent_at and b.last_sent_at <= cutoff),
            key=lambda b: (b.last_sent_at, b.seq),
        )
        return fresh + overdue[: limit - len(fresh)]

    def pending(
        self, *, limit: int, from_seq: int = 1, to_seq: int = MAX_SEQ
    ) -> list[PendingBatch]:
        """Unacknowledged batches with ``from_seq <= seq <= to_seq``, at most ``limit``, by seq.

        Page through everything with ``from_seq = last.seq + 1``.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._require_open()
        self._maybe_recover()
        if self._db is not None:
            with self._storage_guard():
                rows = self._db.conn.execute(
                    _SELECT_RANGE,
                    (from_seq, min(to_seq, MAX_SEQ), limit),
                ).fetchall()
                return [_from_row(row) for row in rows]
        found = (b for b in self._memory.values() if from_seq <= b.seq <= to_seq)
        return list(itertools.islice(found, limit))

    def stats(self) -> OutboxStats:
        """The outbox's state for ``birth``/``state`` payloads; never touches the disk."""
        self._require_open()
        oldest = [t for t in (self._db_oldest, self._memory_oldest()) if t is not None]
        age = None
        if oldest:
            age = min(max((self._now() - min(oldest)).total_seconds(), 0.0), _MAX_AGE_S)
        return OutboxStats(
            pending_batches=self._db_batches + len(self._memory),
            pending_bytes=self._db_bytes + self._memory_bytes,
            dropped_batches=self._dropped_batches,
            dropped_windows=self._dropped_windows,
            oldest_pending_age_s=age,
        )

    # ------------------------------------------------------ sending, acking

    def mark_sent(self, seqs: Iterable[int]) -> None:
        """Record that these batches were just published (clock time); unknown seqs are ignored."""
        wanted = sorted(set(seqs))
        self._require_open()
        self._maybe_recover()
        if not wanted:
            return
        at = self._now()
        if self._db is not None:
            with self._storage_guard():
                conn = self._db.conn
                self._set_sync(conn, full=False)
                with _transaction(conn):
                    conn.execute(
                        "UPDATE batches SET attempts = attempts + 1, last_sent_at = ? "
                        "WHERE seq IN (SELECT value FROM json_each(?))",
                        (_format_time(at), json.dumps(wanted)),
                    )
            return
        for seq in wanted:
            batch = self._memory.get(seq)
            if batch is not None:
                self._memory[seq] = replace(batch, attempts=batch.attempts + 1, last_sent_at=at)

    def acknowledge(self, seqs: Iterable[int]) -> int:
        """Delete the acknowledged batches and return how many were deleted.

        Unknown seqs are ignored: duplicate acks are normal under QoS 1. During a
        storage outage, acks for batches on disk are applied on recovery and not
        counted in the result.
        """
        wanted = sorted(set(seqs))
        self._require_open()
        self._maybe_recover()
        if not wanted:
            return 0
        if self._db is not None:
            with self._storage_guard():
                return self._delete_acked(self._db.conn, wanted)
        deleted = 0
        for seq in wanted:
            batch = self._memory.pop(seq, None)
            if batch is not None:
                self._memory_bytes -= batch.size
                deleted += 1
            elif (
                0 < seq <= self._db_last_seq and len(self._deferred_acks) < self._limits.max_batches
            ):
                self._deferred_acks.add(seq)
        return deleted

    def build_message(
        self, batch: PendingBatch, *, gateway_id: str, historical: bool
    ) -> WindowBatch | EventBatch:
        """The message to publish for ``batch``, with ``sent_at`` from the clock.

        ``historical`` marks a batch sent from the backlog; event batches have no
        such flag and ignore it. Raises :class:`CorruptBatchError` when the stored
        body no longer decodes: log it and acknowledge the seq to discard it.
        """
        validate_id(gateway_id, kind="gateway id")
        sent_at = self._now()
        try:
            if batch.kind is BatchKind.WINDOWS:
                windows = _WINDOWS.validate_json(batch.body, strict=True)
                return WindowBatch(
                    gateway_id=gateway_id,
                    seq=batch.seq,
                    sent_at=sent_at,
                    historical=historical,
                    windows=windows,
                )
            events = _EVENTS.validate_json(batch.body, strict=True)
            return EventBatch(gateway_id=gateway_id, seq=batch.seq, sent_at=sent_at, events=events)
        except ValidationError as exc:
            raise CorruptBatchError(batch.seq, str(exc).splitlines()[0]) from exc

    # ------------------------------------------------------------ internals

    def _now(self) -> datetime:
        now = self._clock()
        if now.utcoffset() is None:
            raise ValueError("the outbox clock returned a naive datetime; it must be UTC")
        return now.astimezone(UTC)

    def _require_open(self) -> None:
        if not self._opened:
            raise OutboxClosedError(f"outbox {self._path} is not open")

    def _memory_oldest(self) -> datetime | None:
        first = next(iter(self._memory.values()), None)
        return None if first is None else first.created_at

    def _hold(self, batches: Iterable[PendingBatch]) -> None:
        """Queue batches in memory, dropping the oldest queued ones beyond the limits."""
        for batch in batches:
            self._memory[batch.seq] = batch
            self._memory_bytes += batch.size
        dropped: list[PendingBatch] = []
        while len(self._memory) > 1 and (
            len(self._memory) > self._limits.max_batches
            or self._memory_bytes > self._limits.max_bytes
        ):
            oldest = self._memory.pop(next(iter(self._memory)))
            self._memory_bytes -= oldest.size
            dropped.append(oldest)
        if dropped:
            windows = sum(b.window_count for b in dropped)
            self._unsaved_batches += len(dropped)
            self._unsaved_windows += windows
            self._count_drops(len(dropped), windows, dropped[0].seq, dropped[-1].seq, "memory")

    def _count_drops(self, batches: int, windows: int, first: int, last: int, where: str) -> None:
        self._dropped_batches += batches
        self._dropped_windows += windows
        _log.warning(
            "outbox %s full (%s; limits %d batches, %d bytes): dropped the %d oldest batches "
            "(seq %d..%d, %d windows); %d batches and %d windows dropped in total",
            self._path,
            where,
            self._limits.max_batches,
            self._limits.max_bytes,
            batches,
            first,
            last,
            windows,
            self._dropped_batches,
            self._dropped_windows,
        )

    # Storage failures -----------------------------------------------------

    @contextlib.contextmanager
    def _storage_guard(self) -> Iterator[None]:
        """Turn a storage failure into an outage (or a quarantine); let bugs propagate.

        Swallows the failure: code after the ``with`` block runs with ``_db``
        either ``None`` (outage) or a fresh database (after a quarantine).
        """
        try:
            yield
        except _BUG_ERRORS:
            raise
        except _STORAGE_ERRORS as exc:
            self._storage_failed(exc)

    def _storage_failed(self, exc: Exception, *, quarantine: bool = True) -> None:
        self._disconnect()
        if quarantine and _is_corrupt(exc):
            try:
                self._quarantine(exc)
            except OSError as move_exc:
                self._enter_outage(move_exc)
                return
            self._reconnect(quarantine=False)
            return
        self._enter_outage(exc)

    def _enter_outage(self, exc: BaseException) -> None:
        cause = _describe(exc)
        if self._outage is None:
            _log.error(
                "outbox database %s is unusable (%s): holding batches in memory "
                "(limits %d batches, %d bytes) and retrying every %g s",
                self._path,
                cause,
                self._limits.max_batches,
                self._limits.max_bytes,
                self._retry_interval_s,
            )
        else:
            _log.debug("outbox database %s is still unusable: %s", self._path, cause)
        self._outage = cause
        self._next_retry = time.monotonic() + self._retry_interval_s

    def _quarantine(self, exc: BaseException) -> None:
        """Move a corrupt database (and its WAL) aside so a new one can start."""
        stamp = self._now().strftime("%Y%m%dT%H%M%S%fZ")
        target = self._path.with_name(f"{self._path.name}.corrupt-{stamp}")
        lost = self._db_batches
        self._path.rename(target)
        for suffix in ("-wal", "-shm"):
            companion = self._path.with_name(self._path.name + suffix)
            if companion.exists():
                companion.rename(target.with_name(target.name + suffix))
        _log.error(
            "outbox database %s is corrupt (%s): moved it to %s and started a new one; "
            "%s unacknowledged batches in it will not be sent",
            self._path,
            _describe(exc),
            target,
            lost or "any",
        )
        self._db_batches = self._db_bytes = self._db_windows = 0
        self._db_oldest = None
        self._deferred_acks.clear()

    def _maybe_recover(self) -> None:
        if self._db is None and time.monotonic() >= self._next_retry:
            self._reconnect()

    def _reconnect(self, *, quarantine: bool = True) -> None:
        """Open the database and write the memory queue into it; on failure, an outage."""
        held = len(self._memory)
        try:
            self._flush(self._connect().conn)
        except _BUG_ERRORS:
            raise
        except _STORAGE_ERRORS as exc:
            self._storage_failed(exc, quarantine=quarantine)
            return
        if self._outage is not None:
            _log.info(
                "outbox database %s is usable again (after: %s): wrote %d batches held in memory",
                self._path,
                self._outage,
                held,
            )
            self._outage = None

    def _disconnect(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            with contextlib.suppress(sqlite3.Error):
                db.close()

    # Database -------------------------------------------------------------

    def _connect(self) -> sqlite_utils.Database:
        """Open the database and load what it holds; the caller flushes next."""
        self._disconnect()
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, timeout=self._busy_timeout_s, isolation_level=None)
        try:
            db = sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)
            db.enable_wal()
            conn.execute(f"PRAGMA journal_size_limit = {_JOURNAL_SIZE_LIMIT}")
            _create_schema(db)
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            version = meta.get("schema_version", _SCHEMA_VERSION)
            if version != _SCHEMA_VERSION:
                raise OutboxError(
                    f"outbox {self._path} has schema version {version}; "
                    f"this agent reads version {_SCHEMA_VERSION}"
                )
            count, size, windows, max_seq = conn.execute(
                "SELECT count(*), coalesce(sum(size), 0), "
                "coalesce(sum(CASE kind WHEN 'windows' THEN items END), 0), coalesce(max(seq), 0) "
                "FROM batches"
            ).fetchone()
            oldest = _oldest(conn)
        except BaseException:
            conn.close()
            raise
        self._db = db
        self._sync_full = None
        self._db_batches, self._db_bytes, self._db_windows = count, size, windows
        self._db_oldest = oldest
        self._db_last_seq = max(meta.get("last_seq", 0), max_seq)
        self._last_seq = max(self._last_seq, self._db_last_seq, self._read_sidecar())
        self._meta_missing = "dropped_batches" not in meta
        if not self._meta_missing:
            # Counts this process made but could not write yet come on top.
            self._dropped_batches = meta["dropped_batches"] + self._unsaved_batches
            self._dropped_windows = meta["dropped_windows"] + self._unsaved_windows
        else:
            # A new file: everything known so far is still to be written.
            self._unsaved_batches = self._dropped_batches
            self._unsaved_windows = self._dropped_windows
        return db

    def _flush(self, conn: sqlite3.Connection) -> None:
        """Write the memory queue to the database in one durable transaction.

        Also applies deferred acks, drops the oldest batches beyond the limits
        and updates ``meta``.
        """
        held = list(self._memory.values())
        if not (held or self._deferred_acks or self._unsaved_batches or self._meta_missing):
            return  # nothing to write: a locked database can still serve reads
        if held and held[0].seq <= self._db_last_seq:
            # Seqs were issued while the database was unreadable and it turned out
            # to hold higher ones: renumber above everything issued, as seqs never repeat.
            base = self._last_seq
            held = [replace(b, seq=base + i) for i, b in enumerate(held, start=1)]
            self._memory = {b.seq: b for b in held}
            self._last_seq = held[-1].seq
            _log.warning(
                "outbox %s: renumbered %d batches held in memory to seq %d..%d",
                self._path,
                len(held),
                base + 1,
                base + len(held),
            )
        incoming_bytes = sum(b.size for b in held)
        self._set_sync(conn, full=True)
        with _transaction(conn):
            count, size, windows = self._db_batches, self._db_bytes, self._db_windows
            if self._deferred_acks:
                acked = _delete(conn, sorted(self._deferred_acks))
                count, size, windows = count - acked[0], size - acked[1], windows - acked[2]
            dropped = _select_oldest(
                conn,
                batches=count + len(held) - self._limits.max_batches,
                size=size + incoming_bytes - self._limits.max_bytes,
            )
            if dropped:
                conn.execute("DELETE FROM batches WHERE seq <= ?", (dropped[-1][0],))
                conn.execute("DELETE FROM bodies WHERE seq <= ?", (dropped[-1][0],))
                count -= len(dropped)
                size -= sum(row[2] for row in dropped)
                windows -= sum(row[1] for row in dropped)
            conn.executemany(
                "INSERT INTO batches (seq, kind, created_at, items, attempts, last_sent_at, size) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [_to_row(b) for b in held],
            )
            conn.executemany(
                "INSERT INTO bodies (seq, body) VALUES (?, ?)", [(b.seq, b.body) for b in held]
            )
            dropped_windows = sum(row[1] for row in dropped)
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [
                    ("schema_version", _SCHEMA_VERSION),
                    ("last_seq", self._last_seq),
                    ("dropped_batches", self._dropped_batches + len(dropped)),
                    ("dropped_windows", self._dropped_windows + dropped_windows),
                ],
            )
            oldest = _oldest(conn)
        self._db_batches = count + len(held)
        self._db_bytes = size + incoming_bytes
        self._db_windows = windows + sum(b.window_count for b in held)
        self._db_oldest = oldest
        self._db_last_seq = self._last_seq
        self._memory.clear()
        self._memory_bytes = 0
        self._deferred_acks.clear()
        self._unsaved_batches = self._unsaved_windows = 0
        self._meta_missing = False
        if dropped:
            self._count_drops(len(dropped), dropped_windows, dropped[0][0], dropped[-1][0], "disk")

    def _delete_acked(self, conn: sqlite3.Connection, seqs: list[int]) -> int:
        self._set_sync(conn, full=False)
        with _transaction(conn):
            deleted, size, windows = _delete(conn, seqs)
            oldest = _oldest(conn) if deleted else self._db_oldest
        self._db_batches -= deleted
        self._db_bytes -= size
        self._db_windows -= windows
        self._db_oldest = oldest
        return deleted

    def _due_from_db(self, conn: sqlite3.Connection, cutoff: str, limit: int) -> list[PendingBatch]:
        rows = conn.execute(_SELECT_UNSENT, (limit,)).fetchall()
        if len(rows) < limit:
            rows += conn.execute(_SELECT_OVERDUE, (cutoff, limit - len(rows))).fetchall()
        return [_from_row(row) for row in rows]

    def _set_sync(self, conn: sqlite3.Connection, *, full: bool) -> None:
        if self._sync_full is not full:
            conn.execute(f"PRAGMA synchronous = {'FULL' if full else 'NORMAL'}")
            self._sync_full = full

    # Sidecar seq file -------------------------------------------------------

    def _read_sidecar(self) -> int:
        try:
            text = self._seq_path.read_text(encoding="ascii")
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as exc:
            _log.warning("cannot read the outbox seq file %s: %s", self._seq_path, exc)
            return 0
        try:
            value = int(text.strip())
        except ValueError:
            value = -1
        if not 0 <= value <= MAX_SEQ:
            _log.warning("ignoring the outbox seq file %s: %r is not a seq", self._seq_path, text)
            return 0
        return value

    def _write_sidecar(self) -> None:
        """Atomically record the last seq next to the database (best effort, logged)."""
        try:
            write_atomically(self._seq_path, f"{self._last_seq}\n")
        except OSError as exc:
            if not self._sidecar_failing:
                _log.warning(
                    "cannot write the outbox seq file %s (%s): seqs may repeat if the "
                    "database is lost",
                    self._seq_path,
                    exc,
                )
                self._sidecar_failing = True
            return
        self._sidecar_failing = False


# ------------------------------------------------------------------ helpers


def _create_schema(db: sqlite_utils.Database) -> None:
    # Bodies (up to 1 MiB each) sit in their own table: scanning batches for the
    # stats, the drop policy or overdue acks then reads a few pages, not the bodies.
    db.create_table(
        "batches",
        {
            "seq": int,
            "kind": str,
            "created_at": str,
            "items": int,
            "attempts": int,
            "last_sent_at": str,
            "size": int,
        },
        pk="seq",
        not_null={"kind", "created_at", "items", "attempts", "size"},
        defaults={"attempts": 0},
        if_not_exists=True,
        strict=True,
    )
    db.table("batches").create_index(
        ["last_sent_at"], index_name="batches_by_last_sent_at", if_not_exists=True
    )
    db.create_table(
        "bodies",
        {"seq": int, "body": bytes},
        pk="seq",
        not_null={"body"},
        if_not_exists=True,
        strict=True,
    )
    db.create_table(
        "meta", {"key": str, "value": int}, pk="key", not_null={"value"}, if_not_exists=True
    )


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``: take the write lock up front, roll back on error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def _delete(conn: sqlite3.Connection, seqs: list[int]) -> tuple[int, int, int]:
    """Delete batches by seq inside a transaction; return (batches, bytes, windows) deleted."""
    param = json.dumps(seqs)
    count, size, windows = conn.execute(
        "SELECT count(*), coalesce(sum(size), 0), "
        "coalesce(sum(CASE kind WHEN 'windows' THEN items END), 0) "
        "FROM batches WHERE seq IN (SELECT value FROM json_each(?))",
        (param,),
    ).fetchone()
    if count:
        conn.execute("DELETE FROM batches WHERE seq IN (SELECT value FROM json_each(?))", (param,))
        conn.execute("DELETE FROM bodies WHERE seq IN (SELECT value FROM json_each(?))", (param,))
    return int(count), int(size), int(windows)


def _select_oldest(
    conn: sqlite3.Connection, *, batches: int, size: int
) -> list[tuple[int, int, int]]:
    """The oldest batches to drop so that ``batches`` more rows and ``size`` more bytes go.

    Returns ``(seq, windows, size)`` rows, oldest first.
    """
    if batches <= 0 and size <= 0:
        return []
    chosen: list[tuple[int, int, int]] = []
    cursor = conn.execute(
        "SELECT seq, CASE kind WHEN 'windows' THEN items ELSE 0 END, size FROM batches ORDER BY seq"
    )
    try:
        for seq, windows, row_size in cursor:
            if batches <= 0 and size <= 0:
                break
            chosen.append((seq, windows, row_size))
            batches -= 1
            size -= row_size
    finally:
        cursor.close()
    return chosen


def _oldest(conn: sqlite3.Connection) -> datetime | None:
    row = conn.execute("SELECT created_at FROM batches ORDER BY seq LIMIT 1").fetchone()
    return None if row is None else _parse_time(row[0])


def _to_row(batch: PendingBatch) -> tuple[object, ...]:
    sent = None if batch.last_sent_at is None else _format_time(batch.last_sent_at)
    return (
        batch.seq,
        batch.kind.value,
        _format_time(batch.created_at),
        batch.items,
        batch.attempts,
        sent,
        batch.size,
    )


_Row = tuple[int, str, str, int, int, str | None, bytes]
"""A row as the ``_SELECT_*`` queries return it; the STRICT tables guarantee the types."""


def _from_row(row: _Row) -> PendingBatch:
    seq, kind, created_at, items, attempts, last_sent_at, body = row
    return PendingBatch(
        seq=seq,
        kind=BatchKind(kind),
        created_at=_parse_time(created_at),
        items=items,
        body=body,
        attempts=attempts,
        last_sent_at=None if last_sent_at is None else _parse_time(last_sent_at),
    )


def _format_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime(_TIME_FORMAT)


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _is_corrupt(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return (
        isinstance(exc, sqlite3.DatabaseError)
        and code is not None
        and code & 0xFF in _CORRUPT_CODES
    )


def _describe(exc: BaseException) -> str:
    name = getattr(exc, "sqlite_errorname", None)
    return f"{exc} [{name}]" if name else f"{type(exc).__name__}: {exc}"
