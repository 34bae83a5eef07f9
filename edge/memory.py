"""Giving the heap's free memory back to the operating system (glibc's ``malloc_trim``).

Start-up (imports, building the payload validators, reading the configuration
and the outbox) and every window close free many small blocks. glibc keeps the
freed pages in its heap for reuse, so they stay in the agent's RSS although
nothing uses them; ``malloc_trim(0)`` returns them. Elsewhere (musl, macOS,
Windows) :func:`trim_heap` does nothing.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from functools import cache

__all__ = ["trim_heap"]


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)  # glibc only
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    function: Callable[[int], int] = trim
    return function


def trim_heap() -> bool:
    """Return the heap's free pages to the OS (glibc only); whether any were released."""
    trim = _malloc_trim()
    return trim is not None and trim(0) == 1
