"""Delivery: publish the outbox's batches over the MQTT link until the hub acknowledges them.

:class:`Publisher` is the one task that sends batches. It reads them from the
:class:`~segs.edge.outbox.Outbox`, publishes them through the
:class:`~segs.edge.link.MqttLink` and deletes them only when the hub's ``ack``
names their seq (a broker PUBACK deletes nothing). Its rules, in priority order:

1. **Live first.** Batches the agent has just added (:meth:`Publisher.notify_new`:
   closed windows, events) are published as soon as the link is ready, before
   any backlog, with ``historical = false``. The backlog is sent in small bursts
   and the live queue is checked before every burst, so a live batch waits at
   most for one burst. A batch that waited more than one window (the link was
   down) is no longer live: it goes with the backlog, paced.
2. **Sweeps.** When the hub's ``state`` turns ``online``
   (:meth:`Publisher.on_hub_state`) the publisher pages through *everything*
   pending, oldest seq first, skipping batches published after the hub came
   online. The state is retained, so it also arrives on every connect; the hub
   was online before that subscription, so batches published on the current
   connection are skipped too. A ``resend`` command (:meth:`Publisher.on_resend`)
   sweeps its seq range, skipping only what is published after the command.
3. **Due batches.** Otherwise :meth:`Outbox.due`: batches never sent (a backlog
   built while the broker was unreachable), then batches whose ack is overdue
   (sent ``ack_timeout_s`` ago or more).

**Pacing.** Backlog batches (2 and 3) are published only while fewer than
``max_inflight`` batches are awaiting their ack, at most ``burst`` at a time
(concurrently, each awaiting its PUBACK). The hub's acks therefore pace the
drain, and a silent hub gets at most ``max_inflight`` resends per ack timeout.
A batch counts as in flight from its publish until its ack or until
``ack_timeout_s`` has passed; live batches are never held back by the limit.

**historical** is true for a resend (the batch was published before) and for a
batch created more than one window before it is first sent.

Acks (:meth:`Publisher.on_ack`) delete ``seqs`` and ``rejected`` alike; rejected
seqs (dead-lettered by the hub) are logged at ERROR. A stored batch that no
longer decodes is logged at ERROR and discarded. When the link drops, sending
stops until it is ready again; what was in flight is then resent by the sweep
the hub's retained ``online`` state starts, or after the ack timeout.

Everything runs on the event loop's thread (the outbox is not thread-safe).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from segs.edge.exceptions import CorruptBatchError
from segs.edge.link import LinkError, MqttLink
from segs.edge.outbox import Outbox, PendingBatch
from segs.edge.samples import from_epoch
from segs.protocol import Ack, ConnectionState, EncodeError, HubState, ResendCommand, encode
from segs.protocol.limits import MAX_SEQ

__all__ = ["Publisher", "PublisherStats"]

_log = logging.getLogger(__name__)

_MAX_FRESH: Final = 256
"""Live seqs remembered while the link is down; older ones are sent as (paced) backlog."""
_RETRY_AFTER_ERROR_S: Final = 0.5
"""Pause after a failed publish before trying again (the link reconnects meanwhile)."""
_MAX_IDLE_S: Final = 5.0
"""Longest sleep without looking at the outbox (it may hold overdue batches of a past run)."""


@dataclass(slots=True)
class PublisherStats:
    """Counters of the publisher (monotonic, never reset)."""

    published: int = 0
    """Batches published (first sends and resends)."""
    resent: int = 0
    """Of those, resends (``historical`` because published before)."""
    acked: int = 0
    """Batches deleted because the hub acknowledged them."""
    rejected: int = 0
    """Batches the hub dead-lettered (deleted too)."""
    discarded: int = 0
    """Stored batches that no longer decode (deleted)."""
    publish_errors: int = 0
    errors: int = 0
    """Unexpected errors caught at the top of the task (bugs; logged with a traceback)."""
    sweeps: int = 0
    """Resend sweeps started (hub online, resend commands)."""


@dataclass(slots=True)
class _Sweep:
    """A pass over the pending batches with ``cursor <= seq <= last``."""

    cursor: int
    last: int
    started: float
    """Monotonic time it began: batches published since then are skipped."""


class Publisher:
    """Publishes the outbox's batches through the link given to :meth:`run` (module docstring).

    ``window_seconds`` decides when a never-sent batch counts as backlog
    (``historical``). ``clock`` gives epoch seconds (UTC); ``monotonic`` paces
    the in-flight accounting. Call the ``on_*`` methods from the link's
    callbacks and :meth:`notify_new` after adding a batch to the outbox.
    """

    def __init__(
        self,
        outbox: Outbox,
        *,
        gateway_id: str,
        window_seconds: int,
        ack_timeout_s: float = 30.0,
        max_inflight: int = 16,
        burst: int = 8,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if ack_timeout_s <= 0.0:
            raise ValueError(f"ack_timeout_s must be positive, got {ack_timeout_s!r}")
        if max_inflight < 1 or burst < 1:
            raise ValueError("max_inflight and burst must be at least 1")
        self.outbox = outbox
        self.gateway_id = gateway_id
        self.window_seconds = window_seconds
        self.ack_timeout_s = float(ack_timeout_s)
        self.max_inflight = max_inflight
        self.burst = min(burst, max_inflight)
        self.stats = PublisherStats()
        self._clock = clock
        self._monotonic = monotonic
        self._fresh: deque[int] = deque(maxlen=_MAX_FRESH)
        self._inflight: dict[int, tuple[float, float]] = {}
        """seq → (monotonic time its last publish began, time its ack timeout runs from),
        until acked or timed out."""
        self._sweeps: list[_Sweep] = []
        self._wake = asyncio.Event()
        self._generation = -1
        self._ready_at = 0.0

    # --- what the agent calls -----------------------------------------------------------------

    @property
    def inflight(self) -> int:
        """Batches published and awaiting their ack (not yet timed out)."""
        self._expire(self._monotonic())
        return len(self._inflight)

    def notify_new(self, seq: int) -> None:
        """A batch was just added to the outbox: publish it before any backlog."""
        self._fresh.append(seq)
        self._wake.set()

    def on_ack(self, ack: Ack) -> None:
        """The hub committed (or dead-lettered) these seqs: delete them."""
        seqs = [*ack.seqs, *ack.rejected]
        deleted = self.outbox.acknowledge(seqs)
        for seq in seqs:
            self._inflight.pop(seq, None)
        self.stats.acked += deleted
        if ack.rejected:
            self.stats.rejected += len(ack.rejected)
            _log.error(
                "the hub rejected batches seq %s (stored as dead letters); they are deleted here",
                _ranges(ack.rejected),
            )
        self._wake.set()

    def on_hub_state(self, state: HubState, retained: bool = False) -> None:
        """``online`` starts a sweep over everything pending (see :meth:`on_hub_online`)."""
        if state.state is ConnectionState.ONLINE:
            self.on_hub_online(retained=retained)

    def on_hub_online(self, *, retained: bool = False) -> None:
        """Resend everything that is pending (replaces any sweep in progress).

        A ``retained`` online state was there before this connection subscribed:
        the hub heard everything published on this connection, so the sweep skips
        it. A fresh one (the hub just came up) skips only what is published later.
        """
        started = self._ready_at if retained else self._monotonic()
        self._sweeps = [_Sweep(1, MAX_SEQ, started)]
        self.stats.sweeps += 1
        self._wake.set()

    def on_resend(self, command: ResendCommand) -> None:
        """Resend the pending batches in the command's seq range."""
        if command.to_seq < command.from_seq:
            _log.warning(
                "resend command %s: empty range %d..%d; ignored",
                command.command_id,
                command.from_seq,
                command.to_seq,
            )
            return
        self._sweeps.append(_Sweep(command.from_seq, command.to_seq, self._monotonic()))
        self.stats.sweeps += 1
        self._wake.set()

    def on_link_ready(self) -> None:
        """A new connection: nothing published on the old one is in flight any more."""
        self._ready_at = self._monotonic()
        self._inflight.clear()
        self._wake.set()

    # --- the task -----------------------------------------------------------------------------

    async def run(self, link: MqttLink) -> None:
        """Publish through ``link`` until cancelled (the one sending task)."""
        while True:
            if not link.ready:
                await link.wait_ready()
            if link.generation != self._generation:
                self._generation = link.generation
                self._inflight.clear()
            self._wake.clear()
            try:
                sent = await self._step(link)
            except LinkError as exc:
                self.stats.publish_errors += 1
                _log.debug("publishing failed: %s", exc)
                await asyncio.sleep(_RETRY_AFTER_ERROR_S)
                continue
            except Exception:  # noqa: BLE001 - the task's top level: log, count, go on
                self.stats.errors += 1
                _log.exception("the publisher failed; trying again")
                await asyncio.sleep(_RETRY_AFTER_ERROR_S)
                continue
            if not sent:
                await self._idle()

    async def _idle(self) -> None:
        """Sleep until woken, until the next in-flight batch times out, or at most a while."""
        now = self._monotonic()
        timeout = min(_MAX_IDLE_S, self.ack_timeout_s)
        if self._inflight:
            first = min(since for _, since in self._inflight.values())
            timeout = min(timeout, max(first + self.ack_timeout_s - now, 0.0) + 0.01)
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _step(self, link: MqttLink) -> bool:
        """Publish what is most urgent; return whether anything was published."""
        if self._fresh:
            return await self._send_fresh(link)
        now = self._monotonic()
        self._expire(now)
        room = min(self.max_inflight - len(self._inflight), self.burst)
        if room <= 0:
            return False
        batches: list[PendingBatch] = []
        while self._sweeps and not batches:
            batches = self._from_sweeps(room)
        if not batches:
            batches = self._due(room)
        if not batches:
            return False
        await self._send(link, batches)
        return True

    async def _send_fresh(self, link: MqttLink) -> bool:
        """Publish the batches added lately; those that waited a window go with the backlog."""
        wanted = set(self._fresh)
        self._fresh.clear()
        batches: list[PendingBatch] = []
        low, high = min(wanted), max(wanted)
        young = from_epoch(self._clock()) - timedelta(seconds=self.window_seconds)
        while True:
            page = self.outbox.pending(from_seq=low, to_seq=high, limit=64)
            batches += [b for b in page if b.seq in wanted and b.created_at >= young]
            if len(page) < 64:
                break
            low = page[-1].seq + 1
        if not batches:
            return False
        for start in range(0, len(batches), self.burst):
            await self._send(link, batches[start : start + self.burst])
        return True

    def _from_sweeps(self, room: int) -> list[PendingBatch]:
        sweep = self._sweeps[0]
        chosen: list[PendingBatch] = []
        while len(chosen) < room:
            page = self.outbox.pending(
                from_seq=sweep.cursor, to_seq=sweep.last, limit=room - len(chosen) + 8
            )
            if not page:
                self._sweeps.pop(0)
                break
            for batch in page:
                sweep.cursor = batch.seq + 1
                flight = self._inflight.get(batch.seq)
                if flight is not None and flight[0] >= sweep.started:
                    continue  # already published since the sweep began
                chosen.append(batch)
                if len(chosen) == room:
                    break
        return chosen

    def _due(self, room: int) -> list[PendingBatch]:
        batches = self.outbox.due(
            ack_timeout_s=self.ack_timeout_s, limit=room + len(self._inflight)
        )
        return [b for b in batches if b.seq not in self._inflight][:room]

    async def _send(self, link: MqttLink, batches: Sequence[PendingBatch]) -> None:
        """Publish ``batches`` concurrently; mark the ones the broker took as sent."""
        now = self._clock()
        backlog_before = from_epoch(now) - timedelta(seconds=self.window_seconds)
        payloads: list[tuple[PendingBatch, bytes, bool]] = []
        for batch in batches:
            resend = batch.attempts > 0
            historical = resend or batch.created_at < backlog_before
            try:
                message = self.outbox.build_message(
                    batch, gateway_id=self.gateway_id, historical=historical
                )
                payload = encode(message)
            except (CorruptBatchError, EncodeError) as exc:
                self.stats.discarded += 1
                _log.error(
                    "outbox batch seq %d cannot be sent and is discarded: %s", batch.seq, exc
                )
                self.outbox.acknowledge([batch.seq])
                continue
            payloads.append((batch, payload, resend))
        if not payloads:
            return
        # In flight from now: the hub's ack may arrive before the broker's PUBACK does.
        stamp = self._monotonic()
        for batch, _, _ in payloads:
            self._inflight[batch.seq] = (stamp, stamp)
        results = await asyncio.gather(
            *(link.publish(b.topic_kind, payload) for b, payload, _ in payloads),
            return_exceptions=True,
        )
        sent: list[int] = []
        error: LinkError | None = None
        acked_at = self._monotonic()  # the ack timeout runs from the PUBACK, as in the outbox
        for (batch, _, resend), result in zip(payloads, results, strict=True):
            if isinstance(result, LinkError):
                self._inflight.pop(batch.seq, None)
                error = error or result
                continue
            if isinstance(result, BaseException):
                raise result
            sent.append(batch.seq)
            if batch.seq in self._inflight:  # not acknowledged already
                self._inflight[batch.seq] = (stamp, acked_at)
            self.stats.published += 1
            self.stats.resent += resend
        if sent:
            self.outbox.mark_sent(sent)
        if error is not None:
            raise error

    def _expire(self, now: float) -> None:
        cutoff = now - self.ack_timeout_s
        if self._inflight and min(since for _, since in self._inflight.values()) <= cutoff:
            self._inflight = {s: f for s, f in self._inflight.items() if f[1] > cutoff}


def _ranges(seqs: Sequence[int]) -> str:
    """``1..3, 7`` for [1, 2, 3, 7]."""
    parts: list[str] = []
    ordered = sorted(set(seqs))
    start = prev = ordered[0]
    for seq in [*ordered[1:], None]:
        if seq is not None and seq == prev + 1:
            prev = seq
            continue
        parts.append(str(start) if start == prev else f"{start}..{prev}")
        if seq is not None:
            start = prev = seq
    return ", ".join(parts)
