"""The store-and-forward outbox: durability, acks, resends, bounds and storage failures.

Tests assert on outcomes: rows in the SQLite file (read with ``sqlite3``), the
batches the outbox returns and the messages it builds, decoded with the codec.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from pydantic import TypeAdapter

from segs.edge.exceptions import (
    CorruptBatchError,
    EdgeError,
    InvalidBatchError,
    OutboxClosedError,
    OutboxError,
)
from segs.edge.outbox import (
    DEFAULT_FILENAME,
    MAX_BODY_BYTES,
    BatchKind,
    Outbox,
    OutboxLimits,
    PendingBatch,
    split_events,
    split_windows,
)
from segs.protocol import (
    EventBatch,
    OutboxStats,
    PowerSpike,
    QualityFlag,
    TopicKind,
    Window,
    WindowBatch,
    decode,
    encode,
    limits,
)

START = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
GW = "gw-test-01"
LOGGER = "segs.edge.outbox"


class Clock:
    """A settable UTC clock."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def window(meter: int = 1, minute: int = 0, *, meter_id: str | None = None) -> Window:
    return Window(
        meter_id=meter_id or f"MTR-{meter:08d}",
        window_start=START + timedelta(minutes=minute),
        window_seconds=60,
        import_kwh=10234.567 + minute * 0.05,
        export_kwh=12.5,
        import_delta_kwh=0.0583,
        export_delta_kwh=0.0,
        power_min_kw=2.91,
        power_avg_kw=3.5,
        power_max_kw=4.12,
        voltage_avg_v=231.4,
        current_avg_a=5.07,
        power_factor_avg=0.97,
        frequency_avg_hz=49.98,
        samples_got=57,
        samples_expected=60,
        quality=(QualityFlag.PARTIAL,),
    )


def long_window(minute: int) -> Window:
    """A window as large as the protocol allows: longest id, every field and flag."""
    third = 1 / 3
    return Window(
        meter_id=f"M{minute:063d}",
        window_start=START + timedelta(minutes=minute),
        window_seconds=60,
        import_kwh=1e9 * third,
        export_kwh=1e8 * third,
        import_delta_kwh=third,
        export_delta_kwh=third,
        power_min_kw=-1000 * third,
        power_avg_kw=third,
        power_max_kw=1000 * third,
        voltage_avg_v=700 * third,
        current_avg_a=1000 * third,
        power_factor_avg=-third,
        frequency_avg_hz=150 * third,
        samples_got=59,
        samples_expected=60,
        quality=tuple(QualityFlag),
    )


def windows(count: int, minute: int = 0) -> list[Window]:
    return [window(meter, minute) for meter in range(1, count + 1)]


def spike(meter: int = 1) -> PowerSpike:
    return PowerSpike(
        meter_id=f"MTR-{meter:08d}", at=START, power_kw=9.15, baseline_kw=4.5, ratio=2.03
    )


def file_rows(
    path: Path, sql: str = "SELECT seq FROM batches ORDER BY seq"
) -> list[tuple[object, ...]]:
    """Read the outbox file with a separate connection, as an operator would."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


def file_seqs(path: Path, sql: str = "SELECT seq FROM batches ORDER BY seq") -> list[int]:
    return [int(str(row[0])) for row in file_rows(path, sql)]


def meta(path: Path) -> dict[str, object]:
    return {str(key): value for key, value in file_rows(path, "SELECT key, value FROM meta")}


def logged(caplog: pytest.LogCaptureFixture, level: int = logging.ERROR) -> list[str]:
    """The outbox's log messages at exactly ``level``."""
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / DEFAULT_FILENAME


@pytest.fixture
def outbox(db_path: Path, clock: Clock) -> Iterator[Outbox]:
    with Outbox(db_path, clock=clock) as box:
        yield box


# ------------------------------------------------------------ storing, seqs


def test_add_stores_durable_rows_in_wal_mode(outbox: Outbox, db_path: Path) -> None:
    first = outbox.add_windows(windows(3))
    second = outbox.add_events([spike(1), spike(2)])

    assert (first, second) == (1, 2)
    rows = file_rows(
        db_path,
        "SELECT seq, kind, items, attempts, last_sent_at, body "
        "FROM batches JOIN bodies USING (seq)",
    )
    assert [row[:5] for row in rows] == [(1, "windows", 3, 0, None), (2, "events", 2, 0, None)]
    body = rows[0][5]
    assert isinstance(body, bytes)
    assert TypeAdapter(tuple[Window, ...]).validate_json(body) == tuple(windows(3))
    assert meta(db_path)["last_seq"] == 2
    assert file_rows(db_path, "PRAGMA journal_mode") == [("wal",)]
    assert (db_path.parent / "outbox.db.seq").read_text() == "2\n"


def test_build_message_round_trips_through_the_codec(outbox: Outbox, clock: Clock) -> None:
    outbox.add_windows(windows(2))
    outbox.add_events([spike()])
    clock.advance(90)

    window_batch, event_batch = outbox.pending(limit=10)
    message = outbox.build_message(window_batch, gateway_id=GW, historical=True)
    assert window_batch.topic_kind is TopicKind.WINDOWS
    decoded = decode(encode(message), WindowBatch)
    assert decoded.seq == 1
    assert decoded.historical is True
    assert decoded.sent_at == START + timedelta(seconds=90)
    assert decoded.windows == tuple(windows(2))
    assert window_batch.created_at == START

    events = decode(
        encode(outbox.build_message(event_batch, gateway_id=GW, historical=True)), EventBatch
    )
    assert event_batch.topic_kind is TopicKind.EVENTS
    assert (events.seq, events.events) == (2, (spike(),))


def test_seq_continues_across_reopen_and_an_empty_outbox(db_path: Path, clock: Clock) -> None:
    with Outbox(db_path, clock=clock) as box:
        seqs = [box.add_windows([window(minute=i)]) for i in range(3)]
        assert box.acknowledge(seqs) == 3
        assert file_seqs(db_path) == []
    with Outbox(db_path, clock=clock) as box:
        assert box.last_seq == 3
        assert box.add_events([spike()]) == 4
    assert file_seqs(db_path) == [4]


def test_invalid_batches_are_refused_without_using_a_seq(db_path: Path) -> None:
    with Outbox(db_path, limits=OutboxLimits(max_bytes=2000)) as box:
        with pytest.raises(InvalidBatchError, match=r"1\.\.2000"):
            box.add_windows([])
        with pytest.raises(InvalidBatchError, match="twice"):
            box.add_windows([window(1), window(1)])
        with pytest.raises(InvalidBatchError, match="the limit is 2000"):
            box.add_windows(windows(10))
        with pytest.raises(InvalidBatchError, match=r"1\.\.500"):
            box.add_events([spike()] * 501)
        assert box.add_windows([window()]) == 1
    assert file_seqs(db_path) == [1]
    assert issubclass(InvalidBatchError, ValueError)
    assert issubclass(InvalidBatchError, EdgeError)


def test_lifecycle_errors(db_path: Path) -> None:
    box = Outbox(db_path)
    assert not db_path.exists()  # the constructor touches nothing
    with pytest.raises(OutboxClosedError):
        box.add_windows([window()])
    box.open()
    with pytest.raises(OutboxError, match="already open"):
        box.open()
    box.close()
    box.close()
    assert not box.is_open
    naive = Outbox(db_path, clock=lambda: datetime(2026, 1, 1))  # noqa: DTZ001
    with naive, pytest.raises(ValueError, match="naive"):
        naive.add_windows([window()])
    with pytest.raises(ValueError, match="max_batches"):
        OutboxLimits(max_batches=0)


def test_split_windows_keeps_each_batch_inside_the_protocol_limits(tmp_path: Path) -> None:
    # Longest ids and every optional field: 2000 of these exceed 1 MiB.
    big = [long_window(i) for i in range(2000)]
    chunks = split_windows(big)
    assert len(chunks) == 2
    assert [w for chunk in chunks for w in chunk] == big
    small = split_windows(big[:10], max_items=4)
    assert [len(chunk) for chunk in small] == [4, 4, 2]

    with Outbox(tmp_path / DEFAULT_FILENAME) as box:
        for chunk in chunks:
            box.add_windows(chunk)
        for batch in box.pending(limit=10):
            assert batch.size <= MAX_BODY_BYTES
            data = encode(box.build_message(batch, gateway_id="g" * 64, historical=True))
            assert len(data) <= limits.MAX_PAYLOAD_BYTES
        # The split's size accounting is exact: a chunk cut at a body's size fits it.
        body = box.pending(limit=1)[0].body
        assert len(split_windows(chunks[0], max_bytes=len(body))) == 1
        assert len(split_windows(chunks[0], max_bytes=len(body) - 1)) == 2
    with pytest.raises(ValueError, match="one item"):
        split_windows([window()], max_bytes=100)
    assert [len(chunk) for chunk in split_events([spike()] * 501)] == [500, 1]


def test_a_stored_body_that_no_longer_decodes_is_reported_by_seq(
    outbox: Outbox, db_path: Path
) -> None:
    seq = outbox.add_windows([window()])
    with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute("UPDATE bodies SET body = ? WHERE seq = ?", (b'[{"meter_id": 1}]', seq))
    [batch] = outbox.pending(limit=1)
    with pytest.raises(CorruptBatchError, match=f"seq {seq} cannot be decoded") as caught:
        outbox.build_message(batch, gateway_id=GW, historical=False)
    assert caught.value.seq == seq
    assert outbox.acknowledge([seq]) == 1  # how the publisher discards it


# ------------------------------------------------------ acks and resending


def test_hub_silent_batches_are_resent_and_kept_until_acked(
    outbox: Outbox, db_path: Path, clock: Clock
) -> None:
    seqs = [outbox.add_windows(windows(2, minute=i)) for i in range(5)]

    assert [b.seq for b in outbox.due(ack_timeout_s=30, limit=100)] == seqs
    outbox.mark_sent(seqs)  # published; a PUBACK deletes nothing
    assert outbox.due(ack_timeout_s=30, limit=100) == []
    clock.advance(29)
    assert outbox.due(ack_timeout_s=30, limit=100) == []

    new = outbox.add_events([spike()])
    clock.advance(1)
    due = outbox.due(ack_timeout_s=30, limit=100)
    assert [b.seq for b in due] == [new, *seqs]  # never-sent first, then overdue
    assert [b.attempts for b in due] == [0, 1, 1, 1, 1, 1]
    assert due[1].last_sent_at == START
    assert [b.seq for b in outbox.due(ack_timeout_s=30, limit=3)] == [new, *seqs[:2]]
    outbox.mark_sent(b.seq for b in due)
    clock.advance(600)  # still silent: resent again, nothing deleted
    again = outbox.due(ack_timeout_s=30, limit=100)
    assert [(b.seq, b.attempts) for b in again] == [(1, 2), (2, 2), (3, 2), (4, 2), (5, 2), (6, 1)]
    assert file_seqs(db_path) == [*seqs, new]
    stats = outbox.stats()
    assert stats.pending_batches == 6
    assert stats.oldest_pending_age_s == 630.0
    assert stats.pending_bytes == sum(b.size for b in due)

    # Acks arrive later, with duplicates and unknown seqs mixed in.
    assert outbox.acknowledge([seqs[0], seqs[1], 999]) == 2
    assert outbox.acknowledge([seqs[0]]) == 0
    assert outbox.acknowledge([*seqs[2:], new]) == 4
    assert file_seqs(db_path) == []
    assert outbox.due(ack_timeout_s=0, limit=100) == []
    assert outbox.stats() == OutboxStats(
        pending_batches=0, pending_bytes=0, dropped_batches=0, dropped_windows=0
    )


def test_pending_pages_through_everything_and_serves_resend_ranges(outbox: Outbox) -> None:
    seqs = [outbox.add_windows([window(minute=i)]) for i in range(7)]
    outbox.mark_sent(seqs[:3])
    outbox.acknowledge([seqs[3]])

    pages: list[list[int]] = []
    after = 0
    while page := outbox.pending(from_seq=after + 1, limit=2):
        pages.append([b.seq for b in page])
        after = page[-1].seq
    assert pages == [[1, 2], [3, 5], [6, 7]]
    assert [b.seq for b in outbox.pending(from_seq=2, to_seq=5, limit=10)] == [2, 3, 5]
    assert outbox.pending(from_seq=8, limit=10) == []


# ------------------------------------------------------------------ bounds


def test_full_outbox_drops_the_oldest_counts_and_logs(
    db_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    with Outbox(db_path, clock=clock, limits=OutboxLimits(max_batches=3)) as box:
        box.add_events([spike()])  # seq 1: events count as batches, not windows
        for i in range(4):
            box.add_windows(windows(2, minute=i))  # seqs 2..5
        assert file_seqs(db_path) == [3, 4, 5]
        stats = box.stats()
        assert (stats.pending_batches, stats.dropped_batches, stats.dropped_windows) == (3, 2, 2)
    warnings = logged(caplog, logging.WARNING)
    assert len(warnings) == 2
    assert "dropped the 1 oldest batches (seq 2..2, 2 windows)" in warnings[1]
    assert "2 batches and 2 windows dropped in total" in warnings[1]

    with Outbox(db_path, clock=clock, limits=OutboxLimits(max_batches=3)) as box:
        stats = box.stats()  # the counts survive a restart
        assert (stats.dropped_batches, stats.dropped_windows) == (2, 2)
    assert meta(db_path)["dropped_batches"] == 2


def test_byte_limit_drops_the_oldest_but_never_the_new_batch(db_path: Path) -> None:
    size = len(window().model_dump_json(exclude_none=True)) + 2  # about the same for all
    with Outbox(db_path, limits=OutboxLimits(max_bytes=int(size * 2.5))) as box:
        seqs = [box.add_windows([window(minute=i)]) for i in range(4)]
        assert file_seqs(db_path) == seqs[2:]
        kept = box.pending(limit=10)
        assert box.stats().pending_bytes == sum(b.size for b in kept) <= size * 2.5
        assert box.stats().dropped_windows == 2


# ---------------------------------------------------------------- kill -9

CHILD = textwrap.dedent(
    """
    import sys
    from datetime import UTC, datetime, timedelta
    from pathlib import Path

    from segs.edge.outbox import Outbox
    from segs.protocol import Window

    start = datetime(2026, 11, 27, tzinfo=UTC)
    with Outbox(Path(sys.argv[1])) as outbox:
        i = 0
        while True:
            w = Window(
                meter_id="MTR-1", window_start=start + timedelta(minutes=i), window_seconds=60,
                import_kwh=float(i), export_kwh=0.0, import_delta_kwh=0.0, export_delta_kwh=0.0,
                power_min_kw=0.0, power_avg_kw=0.0, power_max_kw=0.0,
                samples_got=1, samples_expected=1,
            )
            print(outbox.add_windows([w]), flush=True)
            i += 1
    """
)


def _run_and_kill(path: Path, seqs_before_kill: int) -> list[int]:
    """Run a child that adds batches in a loop, SIGKILL it, return every seq it printed."""
    printed: list[int] = []
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None
        for line in child.stdout:
            printed.append(int(line))
            if len(printed) == seqs_before_kill:
                os.kill(child.pid, signal.SIGKILL)  # mid-stream: it keeps adding until then
                break
        rest = child.stdout.read()
        assert child.wait() == -signal.SIGKILL
    # Lines already in the pipe were acknowledged by add_windows too; a torn last line was not.
    printed += [int(line) for line in rest.splitlines(keepends=True) if line.endswith("\n")]
    return printed


def test_sigkill_mid_stream_loses_nothing_and_seqs_continue(db_path: Path) -> None:
    first = _run_and_kill(db_path, 30)
    second = _run_and_kill(db_path, 30)  # the restarted agent continues the seqs

    assert first == list(range(1, len(first) + 1))
    assert second[0] > first[-1]
    assert second == sorted(set(second))
    with Outbox(db_path) as box:
        stored = {b.seq: b for b in box.pending(limit=100_000)}
        assert set(first + second) <= set(stored)
        for seq in first:
            message = box.build_message(stored[seq], gateway_id=GW, historical=True)
            assert isinstance(message, WindowBatch)
            assert message.windows[0].import_kwh == float(seq - 1)
        assert box.add_events([spike()]) > max(stored)


# -------------------------------------------------------- storage failures


def test_corrupt_file_is_moved_aside_and_seqs_continue(
    db_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    with Outbox(db_path, clock=clock) as box:
        for i in range(3):
            box.add_windows([window(minute=i)])
    garbage = b"this is not a database " * 200
    db_path.write_bytes(garbage)

    with Outbox(db_path, clock=clock) as box:
        assert box.storage_ok
        assert box.add_windows([window(minute=9)]) == 4  # from the seq file
        assert box.stats().pending_batches == 1
    moved = list(db_path.parent.glob("outbox.db.corrupt-*"))
    assert [p.read_bytes() for p in moved if not p.name.endswith(("-wal", "-shm"))] == [garbage]
    assert file_seqs(db_path) == [4]
    [message] = logged(caplog)
    assert str(db_path) in message
    assert "corrupt" in message
    assert "file is not a database" in message


def test_unusable_data_dir_holds_batches_in_memory_until_it_works(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    data_dir = tmp_path / "data"
    data_dir.write_text("a file where the data directory should be")
    path = data_dir / DEFAULT_FILENAME

    with Outbox(path, clock=clock, retry_interval_s=0) as box:
        assert not box.storage_ok
        seqs = [box.add_windows(windows(2, minute=i)) for i in range(3)]
        assert seqs == [1, 2, 3]
        due = box.due(ack_timeout_s=30, limit=10)
        assert [b.seq for b in due] == seqs
        message = decode(
            encode(box.build_message(due[0], gateway_id=GW, historical=False)), WindowBatch
        )
        assert message.windows == tuple(windows(2))
        box.mark_sent([1, 2])
        assert box.acknowledge([1]) == 1
        assert box.stats().pending_batches == 2
        [error] = logged(caplog)  # once per outage, however many retries failed
        assert str(path) in error
        assert "unable to open" in error or "Errno" in error

        data_dir.unlink()  # the directory becomes usable
        assert box.add_events([spike()]) == 4
        assert box.storage_ok
        rows = file_rows(path, "SELECT seq, attempts, last_sent_at IS NOT NULL FROM batches")
        assert rows == [(2, 1, 1), (3, 0, 0), (4, 0, 0)]
        assert [b.seq for b in box.due(ack_timeout_s=30, limit=10)] == [3, 4]
    assert len(logged(caplog)) == 1
    assert any("usable again" in m for m in logged(caplog, logging.INFO))


def test_locked_database_mid_run_then_recovery(
    db_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    with Outbox(db_path, clock=clock, retry_interval_s=0, busy_timeout_s=0.05) as box:
        box.add_windows([window(minute=0)])
        box.add_windows([window(minute=1)])
        with contextlib.closing(sqlite3.connect(db_path, isolation_level=None)) as other:
            other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
            assert box.add_windows([window(minute=2)]) == 3
            assert not box.storage_ok
            assert box.add_windows([window(minute=3)]) == 4
            assert box.acknowledge([1]) == 0  # on disk: applied once the lock is gone
            assert box.stats().pending_batches == 4
            other.execute("ROLLBACK")
        assert box.add_windows([window(minute=4)]) == 5
        assert box.storage_ok
        assert file_seqs(db_path) == [2, 3, 4, 5]
        assert box.stats().pending_batches == 4
    [error] = logged(caplog)
    assert "database is locked" in error
    assert str(db_path) in error


def test_seqs_issued_blind_are_renumbered_above_the_database(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    path = data_dir / DEFAULT_FILENAME
    with Outbox(path, clock=clock) as box:
        box.add_windows([window(minute=0)])
        box.add_windows([window(minute=1)])
    hidden = tmp_path / "hidden"
    data_dir.rename(hidden)
    data_dir.write_text("not a directory")

    with Outbox(path, clock=clock, retry_interval_s=0) as box:
        # Neither the database nor the seq file is readable: seqs restart in memory.
        assert box.add_windows([window(minute=2)]) == 1
        data_dir.unlink()
        hidden.rename(data_dir)
        assert box.add_windows([window(minute=3)]) == 4
    assert file_seqs(path) == [1, 2, 3, 4]
    assert any("renumbered 1 batches" in m for m in logged(caplog, logging.WARNING))


def test_close_during_an_outage_reports_the_lost_batches(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    data_dir.write_text("")
    with Outbox(data_dir / DEFAULT_FILENAME, retry_interval_s=3600) as box:
        box.add_windows([window()])
        box.add_windows([window(minute=1)])
    assert any("2 batches (seq 1..2) only in memory" in m for m in logged(caplog))


def test_memory_queue_obeys_the_same_limits(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.write_text("")
    with Outbox(
        data_dir / DEFAULT_FILENAME, limits=OutboxLimits(max_batches=2), retry_interval_s=3600
    ) as box:
        for i in range(4):
            box.add_windows(windows(3, minute=i))
        assert [b.seq for b in box.pending(limit=10)] == [3, 4]
        stats = box.stats()
        assert (stats.pending_batches, stats.dropped_batches, stats.dropped_windows) == (2, 2, 6)
        data_dir.unlink()
        box.close()  # writes the queue on the way out
    assert file_seqs(data_dir / DEFAULT_FILENAME) == [3, 4]
    assert meta(data_dir / DEFAULT_FILENAME)["dropped_windows"] == 6


# ------------------------------------------------------- model-based check


Record = tuple[int, BatchKind, int, datetime | None]  # items, kind, attempts, last sent


class OutboxMachine(RuleBasedStateMachine):
    """Random interleavings of add, mark_sent, acknowledge, clock steps, reopen and outages.

    Plain dicts model the outbox: what is on disk and what is held in memory while
    another connection holds the write lock (a real storage failure). The model
    must agree with what the outbox returns, with its stats and with the rows in
    the file, including the oldest-first drop policy and recovery.
    """

    max_batches = 5
    ack_timeout_s = 30.0

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.path = Path(self.tmp.name) / DEFAULT_FILENAME
        self.clock = Clock()
        self.box = self.open()
        self.locker: sqlite3.Connection | None = None
        self.disk: dict[int, Record] = {}
        self.memory: dict[int, Record] = {}
        self.deferred: set[int] = set()
        self.last_seq = 0
        self.saved_drops = (0, 0)  # batches, windows
        self.unsaved_drops = (0, 0)
        self.minute = 0

    def open(self) -> Outbox:
        box = Outbox(
            self.path,
            clock=self.clock,
            limits=OutboxLimits(max_batches=self.max_batches),
            retry_interval_s=0,
            busy_timeout_s=0,
        )
        box.open()
        return box

    def teardown(self) -> None:
        if self.locker is not None:
            self.locker.close()
        self.box.close()
        self.tmp.cleanup()

    @staticmethod
    def _trim(batches: dict[int, Record], drops: tuple[int, int], limit: int) -> tuple[int, int]:
        count, windows = drops
        while len(batches) > limit:
            items, kind, _, _ = batches.pop(min(batches))
            count, windows = count + 1, windows + (items if kind is BatchKind.WINDOWS else 0)
        return count, windows

    @rule(count=st.integers(1, 3), events=st.booleans())
    def add(self, count: int, events: bool) -> None:
        if events:
            seq = self.box.add_events([spike(m) for m in range(count)])
        else:
            self.minute += 1
            seq = self.box.add_windows(windows(count, minute=self.minute))
        assert seq > self.last_seq
        self.last_seq = seq
        record = (count, BatchKind.EVENTS if events else BatchKind.WINDOWS, 0, None)
        if self.locker is None:
            self.disk[seq] = record
            self.saved_drops = self._trim(self.disk, self.saved_drops, self.max_batches)
        else:
            self.memory[seq] = record
            self.unsaved_drops = self._trim(self.memory, self.unsaved_drops, self.max_batches)

    @precondition(lambda self: self.last_seq > 0)
    @rule(data=st.data())
    def mark_sent(self, data: st.DataObject) -> None:
        seqs = data.draw(st.lists(st.integers(1, self.last_seq + 2), max_size=4))
        self.box.mark_sent(seqs)
        batches = self.disk if self.locker is None else self.memory  # writes fail when locked
        for seq in set(seqs) & set(batches):
            items, kind, attempts, _ = batches[seq]
            batches[seq] = (items, kind, attempts + 1, self.clock.now)

    @precondition(lambda self: self.last_seq > 0)
    @rule(data=st.data())
    def acknowledge(self, data: st.DataObject) -> None:
        seqs = set(data.draw(st.lists(st.integers(1, self.last_seq + 2), max_size=4)))
        batches = self.disk if self.locker is None else self.memory
        assert self.box.acknowledge(seqs) == len(seqs & set(batches))
        for seq in seqs:
            batches.pop(seq, None)
        if self.locker is not None:
            self.deferred |= seqs & set(self.disk)  # applied when the lock goes

    @rule(seconds=st.sampled_from([1, 10, 29, 30, 61]))
    def tick(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @rule()
    def reopen(self) -> None:
        self.box.close()  # while locked, what only memory held is lost (and logged)
        self.memory.clear()
        self.deferred.clear()
        self.unsaved_drops = (0, 0)
        self.box = self.open()

    @precondition(lambda self: self.locker is None)
    @rule()
    def lock(self) -> None:
        self.locker = sqlite3.connect(self.path, isolation_level=None, timeout=0)
        self.locker.execute("BEGIN EXCLUSIVE")

    @precondition(lambda self: self.locker is not None)
    @rule()
    def unlock(self) -> None:
        assert self.locker is not None
        self.locker.execute("ROLLBACK")
        self.locker.close()
        self.locker = None
        # The next call writes the memory queue: deferred acks, then the oldest-first bound.
        for seq in self.deferred:
            self.disk.pop(seq, None)
        self.disk.update(self.memory)
        drops = (
            self.saved_drops[0] + self.unsaved_drops[0],
            self.saved_drops[1] + self.unsaved_drops[1],
        )
        self.saved_drops = self._trim(self.disk, drops, self.max_batches)
        self.memory.clear()
        self.deferred.clear()
        self.unsaved_drops = (0, 0)

    @invariant()
    def agrees_with_the_model(self) -> None:
        pending = self.box.pending(limit=1000)
        if self.box.storage_ok:
            assert not self.memory
            assert not self.deferred
            view = self.disk
        else:
            assert self.locker is not None
            view = self.memory
        assert [b.seq for b in pending] == sorted(view)
        assert [(b.items, b.kind, b.attempts, b.last_sent_at) for b in pending] == [
            view[seq] for seq in sorted(view)
        ]
        assert file_seqs(self.path) == sorted(self.disk)

        cutoff = self.clock.now - timedelta(seconds=self.ack_timeout_s)
        fresh = [s for s in sorted(view) if view[s][3] is None]
        overdue = sorted(
            (s for s in view if (sent := view[s][3]) is not None and sent <= cutoff),
            key=lambda s: (view[s][3], s),
        )
        due = self.box.due(ack_timeout_s=self.ack_timeout_s, limit=1000)
        assert [b.seq for b in due] == fresh + overdue

        stats = self.box.stats()
        assert stats.pending_batches == len(self.disk) + len(self.memory)
        [(disk_bytes,)] = file_rows(self.path, "SELECT coalesce(sum(length(body)), 0) FROM bodies")
        assert file_seqs(self.path, "SELECT seq FROM bodies ORDER BY seq") == sorted(self.disk)
        memory_bytes = 0 if self.box.storage_ok else sum(b.size for b in pending)
        assert stats.pending_bytes == disk_bytes + memory_bytes
        assert (stats.dropped_batches, stats.dropped_windows) == (
            self.saved_drops[0] + self.unsaved_drops[0],
            self.saved_drops[1] + self.unsaved_drops[1],
        )
        assert (stats.oldest_pending_age_s is None) == (not self.disk and not self.memory)
        assert self.box.last_seq == self.last_seq


OutboxMachine.TestCase.settings = settings(max_examples=30, stateful_step_count=30, deadline=None)
TestOutboxModel = OutboxMachine.TestCase


def test_pending_batch_reports_its_size_and_windows() -> None:
    batch = PendingBatch(seq=1, kind=BatchKind.EVENTS, created_at=START, items=3, body=b"[1]")
    assert (batch.size, batch.window_count, batch.topic_kind) == (3, 0, TopicKind.EVENTS)
