"""Small files the agent keeps next to its outbox, written so a crash never leaves half of one."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_atomically"]


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by ``text``: a temporary ``<name>.tmp`` beside it, fsync, rename.

    A crash leaves the old file or the new one. Raises :class:`OSError`.
    """
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    tmp.replace(path)
