"""The state file: energy counters that survive a simulator restart.

A JSON document, written atomically (a temporary file in the same folder, fsync,
then rename), so a crash leaves the previous state or the new one, never half a
file. Counters are stored as float64 per meter id and counter name
(:data:`~segs.sim.physics.COUNTERS`), total and per phase.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from segs.sim.exceptions import StateFileError
from segs.sim.physics import COUNTERS

__all__ = ["STATE_VERSION", "CounterRows", "load_state", "save_state"]

STATE_VERSION: Final = 1

CounterRows = list[list[float]]
"""One meter's counters: ``rows[counter][column]``, columns total, L1, L2, L3."""


def load_state(path: Path) -> dict[str, CounterRows]:
    """Read the counters saved in ``path``; an absent file means a first start (empty)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise StateFileError(f"cannot read the state file {path}: {exc.strerror or exc}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StateFileError(f"the state file {path} is not valid JSON: {exc}") from None
    return _parse(document, path)


def _parse(document: Any, path: Path) -> dict[str, CounterRows]:
    if not isinstance(document, dict) or document.get("version") != STATE_VERSION:
        raise StateFileError(f"the state file {path} is not a version {STATE_VERSION} state file")
    names = document.get("counters")
    meters = document.get("meters")
    if names != list(COUNTERS) or not isinstance(meters, dict):
        raise StateFileError(f"the state file {path} does not hold the counters {list(COUNTERS)}")
    result: dict[str, CounterRows] = {}
    for meter_id, rows in meters.items():
        if not _valid_rows(rows):
            raise StateFileError(f"the state file {path}: bad counters for meter {meter_id!r}")
        result[meter_id] = [[float(value) for value in row] for row in rows]
    return result


def _valid_rows(rows: object) -> bool:
    if not isinstance(rows, list) or len(rows) != len(COUNTERS):
        return False
    return all(
        isinstance(row, list)
        and len(row) == 4
        and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
            for v in row
        )
        for row in rows
    )


def save_state(
    path: Path, meters: Mapping[str, Sequence[Sequence[float]]], *, saved_at: float
) -> None:
    """Write the counters of ``meters`` to ``path`` atomically."""
    document = {
        "version": STATE_VERSION,
        "saved_at": saved_at,
        "counters": list(COUNTERS),
        "meters": {meter_id: [list(row) for row in rows] for meter_id, rows in meters.items()},
    }
    data = json.dumps(document, separators=(",", ":")).encode()
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            Path(temporary).replace(path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise StateFileError(f"cannot write the state file {path}: {exc.strerror or exc}") from None
