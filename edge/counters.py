"""The meters' last published energy counters, kept across restarts (``data_dir/counters.json``).

After a restart the aggregator is seeded with each meter's counters at the end
of its last stored window (:meth:`segs.edge.aggregate.Aggregator.seed_counters`),
so the first window after the restart has a delta that covers the downtime and
deltas keep summing to the counter difference.

The file is rewritten atomically (temporary file, fsync, rename) each time
windows are stored, *after* the outbox has them. It also records the last
outbox seq it covers: at start the agent reads window batches with a higher
seq that are still pending (stored, then killed before the file was written)
and takes their counters too (:func:`merge_windows`), so a ``kill -9`` between
the two writes neither loses nor double counts energy.

Format (version 1)::

    {"version": 1, "seq": 1042,
     "meters": {"MTR-00000001": [10234.567, 12.5, 1764237660.0]}}

with ``[import_kwh, export_kwh, at]`` per meter, ``at`` being the window's end
in epoch seconds (UTC). An unreadable or invalid file is logged at WARNING and
treated as empty (the first windows then start from their first sample, as on
a new gateway); a failed write is logged at ERROR once per outage and retried
with the next windows.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from segs.edge.files import write_atomically
from segs.edge.samples import to_epoch
from segs.protocol import limits
from segs.protocol.messages import Window

__all__ = ["DEFAULT_FILENAME", "CounterMark", "CounterStore", "merge_windows"]

_log = logging.getLogger(__name__)

DEFAULT_FILENAME: Final = "counters.json"
"""The file's name under the agent's ``data_dir``."""

_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class CounterMark:
    """A meter's cumulative counters at the end of its last stored window."""

    import_kwh: float
    export_kwh: float
    at: float
    """The window's end, epoch seconds (UTC)."""

    @classmethod
    def of(cls, window: Window) -> CounterMark:
        """The mark a window leaves."""
        end = to_epoch(window.window_start) + window.window_seconds
        return cls(window.import_kwh, window.export_kwh, end)


def merge_windows(
    marks: Mapping[str, CounterMark], windows: Iterable[Window]
) -> dict[str, CounterMark]:
    """``marks`` updated with ``windows``; for each meter the latest window wins."""
    merged = dict(marks)
    for window in windows:
        mark = CounterMark.of(window)
        known = merged.get(window.meter_id)
        if known is None or mark.at >= known.at:
            merged[window.meter_id] = mark
    return merged


@dataclass
class CounterStore:
    """Reads and writes the counters file at ``path``."""

    path: Path
    _failing: bool = field(default=False, init=False, repr=False)

    def load(self) -> tuple[int, dict[str, CounterMark]]:
        """``(seq, marks)`` from the file; ``(0, {})`` when it is missing or invalid."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return 0, {}
        except (OSError, UnicodeDecodeError) as exc:
            _log.warning(
                "cannot read the counters file %s (%s); starting without it", self.path, exc
            )
            return 0, {}
        try:
            return _parse(text)
        except ValueError as exc:
            _log.warning("ignoring the counters file %s: %s", self.path, exc)
            return 0, {}

    def save(self, seq: int, marks: Mapping[str, CounterMark]) -> bool:
        """Write the file atomically; return whether it worked (failures are logged)."""
        data = {
            "version": _VERSION,
            "seq": seq,
            "meters": {
                meter: [mark.import_kwh, mark.export_kwh, mark.at]
                for meter, mark in sorted(marks.items())
            },
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.path, json.dumps(data, separators=(",", ":")))
        except OSError as exc:
            if not self._failing:
                _log.error(
                    "cannot write the counters file %s (%s): after a restart the first "
                    "windows' energy deltas would start from their first sample",
                    self.path,
                    exc,
                )
                self._failing = True
            return False
        if self._failing:
            _log.info("the counters file %s is written again", self.path)
            self._failing = False
        return True


def _parse(text: str) -> tuple[int, dict[str, CounterMark]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("version") != _VERSION:
        raise ValueError(f"not a version {_VERSION} counters file")
    seq = data.get("seq")
    meters = data.get("meters")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0 or not isinstance(meters, dict):
        raise ValueError("seq or meters is missing or invalid")
    marks: dict[str, CounterMark] = {}
    for meter, row in meters.items():
        if (
            not isinstance(row, list)
            or len(row) != 3
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in row)
        ):
            raise ValueError(f"meter {meter!r}: expected [import_kwh, export_kwh, at]")
        imp, exp, at = (float(v) for v in row)
        if not (
            0.0 <= imp <= limits.MAX_ENERGY_KWH
            and 0.0 <= exp <= limits.MAX_ENERGY_KWH
            and math.isfinite(at)
        ):
            raise ValueError(f"meter {meter!r}: counters out of range")
        marks[str(meter)] = CounterMark(imp, exp, at)
    return seq, marks
