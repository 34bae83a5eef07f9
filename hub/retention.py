"""Retention: delete minute windows older than ``retention_days``, in batches, periodically.

Rollups, regional load and events stay. Each batch is its own short
transaction on a connection of its own, so ingest is never held up for long.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from segs.hub.db.types import utc_now
from segs.hub.exceptions import StoreError
from segs.hub.settings import HubSettings
from segs.hub.store import Clock, Store

__all__ = ["Retention"]

_log = logging.getLogger(__name__)


class Retention:
    """The retention component: one pass every ``retention_interval_s``."""

    def __init__(self, settings: HubSettings, store: Store, *, clock: Clock = utc_now) -> None:
        """Prepare the component; nothing runs until :meth:`run`."""
        self._settings = settings
        self._store = store
        self._clock = clock
        self.deleted = 0
        """Windows deleted since the component started."""
        self.passes = 0

    async def run_once(self) -> int:
        """Delete what is older than the retention period now; return how many windows."""
        cutoff = self._clock() - timedelta(days=self._settings.retention_days)
        deleted = await asyncio.to_thread(
            self._store.retention, cutoff, batch_size=self._settings.retention_batch_size
        )
        self.deleted += deleted
        self.passes += 1
        if deleted:
            _log.info("retention: deleted %d windows older than %s", deleted, cutoff.isoformat())
        return deleted

    async def run(self) -> None:
        """Run until cancelled; returns at once when retention is off (``retention_days = 0``)."""
        if self._settings.retention_days <= 0:
            _log.info("retention is off: minute windows are kept forever")
            return
        while True:
            try:
                await self.run_once()
            except StoreError as exc:
                _log.warning(
                    "retention pass failed (next in %.0f s): %s",
                    self._settings.retention_interval_s,
                    exc,
                )
            await asyncio.sleep(self._settings.retention_interval_s)
