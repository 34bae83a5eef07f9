"""What keeps the agent's RSS down: giving freed heap back, and not importing dnspython."""

from __future__ import annotations

import platform
import sys

from segs.edge.memory import trim_heap


def test_trim_heap_returns_freed_memory_on_glibc_and_does_nothing_elsewhere() -> None:
    blocks = [bytearray(4096) for _ in range(5_000)]  # 20 MB from malloc's heap, not pymalloc
    del blocks
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert trim_heap() is glibc
